/*
 * The behaviour of the three WFP redirect ioctls, written once for both Winsock stand-ins:
 * the Linux one (ws2-stand-in.c, gcc, real Linux sockets) and the Windows one
 * (ws2-stand-in-win.c, a PE DLL built by mingw-w64 for the Wine lane, forwarding the rest
 * to the real ws2_32.dll). Each includes this file once, after it has defined what differs
 * between them (see "What the including file provides" below); everything here is static
 * except the test's controls (standin_*), which both export under the same signatures so
 * that one binding (src/testing/wfp-stand-in.ts) drives either.
 *
 * The ioctls follow Microsoft's documentation of SIO_QUERY_WFP_CONNECTION_REDIRECT_RECORDS
 * / _CONTEXT and SIO_SET_WFP_CONNECTION_REDIRECT_RECORDS:
 *   - a query into a buffer that is too small fails with the required size in
 *     *lpcbBytesReturned (WSAENOBUFS, or ERROR_INSUFFICIENT_BUFFER, the Win32 form of
 *     STATUS_BUFFER_TOO_SMALL), or, as the SDK page says, with WSAEINVAL and a zero count;
 *     standin_size_style() picks which;
 *   - nothing attached: ERROR_NOT_FOUND (STATUS_NOT_FOUND); attached but empty: success
 *     with zero bytes;
 *   - SET keeps its own copy of the blob (the caller may free or reuse its buffer); a
 *     later QUERY of the records on that socket returns the copy;
 *   - a handle that is not a socket: WSAENOTSOCK; an ioctl it does not implement:
 *     WSAEOPNOTSUPP (the Windows stand-in hands those to the real WSAIoctl instead).
 * Stand-in specifics, stricter than Windows documents, so that a backend bug fails loudly:
 * overlapped calls are refused (WSAEINVAL), and SET on a connected socket is refused
 * (WSAEISCONN): the records must be attached before connect.
 *
 * The test plays the kernel callout through the standin_* functions: standin_redirect()
 * says "the connection from client port P was redirected: here are its original
 * destination, records and context", and the accepted socket whose peer port is P reports
 * them (the queries, and getsockopt SO_ORIGINAL_DST through original_destination()).
 *
 * What the including file provides: before the #include, the socket headers (struct
 * sockaddr_storage, AF_INET, AF_INET6, ntohs), SOCKET, ws_dword (the type of
 * *lpcbBytesReturned: DWORD or uint32_t), the Win32/Winsock error numbers used below,
 * struct sock_ref (what identifies one socket while it is open), fail() (sets the thread's
 * last error, returns SOCKET_ERROR), and STANDIN_LOCK() / STANDIN_UNLOCK() (one lock
 * around all the state below); after it, the functions declared under "the platform's
 * side" below.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define SIO_QUERY_RECORDS 0x980000DCu
#define SIO_QUERY_CONTEXT 0x980000DDu
#define SIO_SET_RECORDS 0x980000DEu

/* ------------------------------------------------------------------ the platform's side */

/* 0 when s is a socket, with what identifies it in *ref. */
static int socket_ref(SOCKET s, struct sock_ref *ref);
/* WSAIoctl's answer for a handle that is not a socket. */
static int not_a_socket(void);
static int same_socket(const struct sock_ref *a, const struct sock_ref *b);
/* Whether the socket an entry was made for is still the one open under its handle. */
static int still_open(const struct sock_ref *ref);
/* The peer's (peer 1) or the local port of the socket, by port_in(); -1 when it has none. */
static int port_of(const struct sock_ref *ref, int peer, uint16_t *port);

/* The port of an IPv4 or IPv6 address as the platform's getsockname/getpeername gave it. */
static int port_in(const struct sockaddr_storage *addr, uint16_t *port) {
  if (addr->ss_family == AF_INET) *port = ntohs(((const struct sockaddr_in *)addr)->sin_port);
  else if (addr->ss_family == AF_INET6) *port = ntohs(((const struct sockaddr_in6 *)addr)->sin6_port);
  else return -1;
  return 0;
}

/* ------------------------------------------------------------------ state */

struct blob {
  int present;
  uint8_t *bytes;
  uint32_t len;
};

static void blob_set(struct blob *b, const void *bytes, uint32_t len) {
  free(b->bytes);
  b->bytes = NULL;
  b->len = len;
  b->present = 1;
  if (len > 0) {
    b->bytes = malloc(len);
    memcpy(b->bytes, bytes, len);
  }
}

static void blob_clear(struct blob *b) {
  free(b->bytes);
  memset(b, 0, sizeof *b);
}

/* Per socket. */
struct sock_entry {
  int used;
  struct sock_ref ref;
  struct blob set_records; /* what SIO_SET_WFP_CONNECTION_REDIRECT_RECORDS stored */
  struct blob query[2];    /* test-attached answers: [0] records, [1] context */
  int error[3];            /* test-forced errors: [0] query records, [1] query context, [2] set */
};

/* Per redirected flow, keyed by the client's port: what the callout attached. */
struct flow {
  int used;
  uint16_t client_port;
  uint8_t original_dst[28];
  int original_dst_len;
  struct blob records;
  struct blob context;
  int context_error;
};

#define MAX_SOCKETS 256
#define MAX_FLOWS 256
#define MAX_LOG 256

static struct sock_entry sockets[MAX_SOCKETS];
static struct flow flows[MAX_FLOWS];
static int size_style; /* 0: WSAENOBUFS + size, 1: ERROR_INSUFFICIENT_BUFFER + size, 2: WSAEINVAL + 0 */
static uint32_t out_log[MAX_LOG];
static uint32_t in_log[MAX_LOG];
static uint32_t code_log[MAX_LOG];
static int log_count;

static void entry_clear(struct sock_entry *entry) {
  blob_clear(&entry->set_records);
  blob_clear(&entry->query[0]);
  blob_clear(&entry->query[1]);
  memset(entry, 0, sizeof *entry);
}

static struct sock_entry *entry_for(const struct sock_ref *ref, int create) {
  struct sock_entry *free_slot = NULL;
  for (int i = 0; i < MAX_SOCKETS; i++) {
    if (sockets[i].used && same_socket(&sockets[i].ref, ref)) return &sockets[i];
    if (!sockets[i].used && free_slot == NULL) free_slot = &sockets[i];
  }
  if (!create || free_slot == NULL) return NULL;
  memset(free_slot, 0, sizeof *free_slot);
  free_slot->used = 1;
  free_slot->ref = *ref;
  return free_slot;
}

static struct flow *flow_for_port(uint16_t port) {
  for (int i = 0; i < MAX_FLOWS; i++) {
    if (flows[i].used && flows[i].client_port == port) return &flows[i];
  }
  return NULL;
}

static struct flow *flow_of(const struct sock_ref *ref) {
  uint16_t port;
  if (port_of(ref, 1, &port) != 0) return NULL;
  return flow_for_port(port);
}

/* ------------------------------------------------------------------ WSAIoctl */

static int query(const struct sock_ref *ref, int which, void *out, uint32_t out_len, ws_dword *returned) {
  struct sock_entry *entry = entry_for(ref, 0);
  if (entry != NULL && entry->error[which] != 0) return fail(entry->error[which]);
  const struct blob *found = NULL;
  if (entry != NULL && entry->query[which].present) found = &entry->query[which];
  else if (which == 0 && entry != NULL && entry->set_records.present) found = &entry->set_records;
  else {
    const struct flow *flow = flow_of(ref);
    if (flow != NULL && which == 1 && flow->context_error != 0) return fail(flow->context_error);
    if (flow != NULL) found = which == 0 ? &flow->records : &flow->context;
  }
  if (found == NULL || !found->present) return fail(ERROR_NOT_FOUND);
  if (out_len < found->len) {
    switch (size_style) {
      case 0: *returned = found->len; return fail(WSAENOBUFS);
      case 1: *returned = found->len; return fail(ERROR_INSUFFICIENT_BUFFER);
      default: *returned = 0; return fail(WSAEINVAL);
    }
  }
  if (found->len > 0) memcpy(out, found->bytes, found->len);
  *returned = found->len;
  return 0;
}

/* WSAIoctl for the three WFP codes (any other code: WSAEOPNOTSUPP), logged. */
static int redirect_ioctl(SOCKET s, uint32_t code, void *in, uint32_t in_len, void *out, uint32_t out_len,
                          ws_dword *returned, int overlapped) {
  STANDIN_LOCK();
  if (log_count < MAX_LOG) {
    code_log[log_count] = code;
    in_log[log_count] = in_len;
    out_log[log_count] = out_len;
    log_count++;
  }
  int rc;
  struct sock_ref ref;
  uint16_t peer;
  if (socket_ref(s, &ref) != 0) rc = not_a_socket();
  else if (overlapped) rc = fail(WSAEINVAL);
  else if (returned == NULL) rc = fail(WSAEFAULT);
  else if (code == SIO_QUERY_RECORDS || code == SIO_QUERY_CONTEXT) {
    if (in != NULL || in_len != 0) rc = fail(WSAEINVAL);
    else if (out == NULL && out_len != 0) rc = fail(WSAEFAULT);
    else rc = query(&ref, code == SIO_QUERY_RECORDS ? 0 : 1, out, out_len, returned);
  } else if (code == SIO_SET_RECORDS) {
    struct sock_entry *entry = entry_for(&ref, 1);
    if (in == NULL || in_len == 0 || out != NULL || out_len != 0) rc = fail(WSAEINVAL);
    else if (entry == NULL) rc = fail(WSAENOBUFS);
    else if (entry->error[2] != 0) rc = fail(entry->error[2]);
    else if (port_of(&ref, 1, &peer) == 0) rc = fail(WSAEISCONN);
    else {
      blob_set(&entry->set_records, in, in_len);
      entry->ref = ref; /* the descriptor now open under this identity, for standin_records_set_on_port */
      *returned = 0;
      rc = 0;
    }
  } else {
    rc = fail(WSAEOPNOTSUPP);
  }
  STANDIN_UNLOCK();
  return rc;
}

/* getsockopt(SOL_IP, SO_ORIGINAL_DST) on a socket: what the test's callout attached to its flow. */
static int original_destination(const struct sock_ref *ref, void *value, int *length) {
  STANDIN_LOCK();
  const struct flow *flow = flow_of(ref);
  int rc;
  if (flow == NULL || flow->original_dst_len == 0) rc = fail(WSAEINVAL);
  else if (*length < flow->original_dst_len) rc = fail(WSAEFAULT);
  else {
    memcpy(value, flow->original_dst, (size_t)flow->original_dst_len);
    *length = flow->original_dst_len;
    rc = 0;
  }
  STANDIN_UNLOCK();
  return rc;
}

/* ------------------------------------------------------------------ the test's controls */

void standin_reset(void) {
  STANDIN_LOCK();
  for (int i = 0; i < MAX_SOCKETS; i++) entry_clear(&sockets[i]);
  for (int i = 0; i < MAX_FLOWS; i++) {
    blob_clear(&flows[i].records);
    blob_clear(&flows[i].context);
    flows[i].used = 0;
  }
  size_style = 0;
  log_count = 0;
  STANDIN_UNLOCK();
}

void standin_size_style(int style) {
  STANDIN_LOCK();
  size_style = style;
  STANDIN_UNLOCK();
}

/* Attaches an answer for one query ioctl on one socket; len 0 is "attached but empty". */
int standin_attach(SOCKET s, uint32_t code, const void *bytes, uint32_t len) {
  struct sock_ref ref;
  if (socket_ref(s, &ref) != 0 || (code != SIO_QUERY_RECORDS && code != SIO_QUERY_CONTEXT)) return -1;
  STANDIN_LOCK();
  struct sock_entry *entry = entry_for(&ref, 1);
  if (entry != NULL) blob_set(&entry->query[code == SIO_QUERY_RECORDS ? 0 : 1], bytes, len);
  STANDIN_UNLOCK();
  return entry == NULL ? -1 : 0;
}

/* Makes one ioctl on one socket fail with the given Win32/Winsock error. */
int standin_fail(SOCKET s, uint32_t code, int error) {
  struct sock_ref ref;
  int which = code == SIO_QUERY_RECORDS ? 0 : code == SIO_QUERY_CONTEXT ? 1 : code == SIO_SET_RECORDS ? 2 : -1;
  if (socket_ref(s, &ref) != 0 || which < 0) return -1;
  STANDIN_LOCK();
  struct sock_entry *entry = entry_for(&ref, 1);
  if (entry != NULL) entry->error[which] = error;
  STANDIN_UNLOCK();
  return entry == NULL ? -1 : 0;
}

/*
 * The callout's redirect of the connection from client_port: its original destination (a
 * Windows-layout sockaddr), its records, and its context (context_len UINT32_MAX: none;
 * context_error non-zero: the context query fails with it).
 */
int standin_redirect(uint16_t client_port, const void *original_dst, int original_dst_len, const void *records,
                     uint32_t records_len, const void *context, uint32_t context_len, int context_error) {
  if (original_dst_len < 0 || original_dst_len > 28) return -1;
  STANDIN_LOCK();
  struct flow *flow = flow_for_port(client_port);
  for (int i = 0; flow == NULL && i < MAX_FLOWS; i++) {
    if (!flows[i].used) flow = &flows[i];
  }
  if (flow != NULL) {
    blob_clear(&flow->records);
    blob_clear(&flow->context);
    flow->used = 1;
    flow->client_port = client_port;
    memcpy(flow->original_dst, original_dst, (size_t)original_dst_len);
    flow->original_dst_len = original_dst_len;
    if (records != NULL) blob_set(&flow->records, records, records_len);
    if (context_len != UINT32_MAX) blob_set(&flow->context, context, context_len);
    flow->context_error = context_error;
  }
  STANDIN_UNLOCK();
  return flow == NULL ? -1 : 0;
}

/*
 * The records SET on the open socket bound to local_port, copied into out; returns their
 * length, or UINT32_MAX when no open socket on that port had records set. An entry whose
 * socket has been closed since (still_open, or no longer answering getsockname) is passed over.
 */
uint32_t standin_records_set_on_port(uint16_t local_port, void *out, uint32_t capacity) {
  uint32_t result = UINT32_MAX;
  STANDIN_LOCK();
  for (int i = 0; i < MAX_SOCKETS && result == UINT32_MAX; i++) {
    struct sock_entry *entry = &sockets[i];
    uint16_t port;
    if (!entry->used || !entry->set_records.present) continue;
    if (!still_open(&entry->ref) || port_of(&entry->ref, 0, &port) != 0 || port != local_port) continue;
    result = entry->set_records.len;
    if (out != NULL && capacity >= result && result > 0) memcpy(out, entry->set_records.bytes, result);
  }
  STANDIN_UNLOCK();
  return result;
}

/*
 * The WSAIoctl calls since the last reset: code, input length, output length (the Windows
 * stand-in logs only the three WFP codes, which are all it answers itself).
 */
int standin_ioctl_log(uint32_t *codes, uint32_t *in_lengths, uint32_t *out_lengths, int capacity) {
  STANDIN_LOCK();
  int n = log_count < capacity ? log_count : capacity;
  for (int i = 0; i < n; i++) {
    codes[i] = code_log[i];
    in_lengths[i] = in_log[i];
    out_lengths[i] = out_log[i];
  }
  STANDIN_UNLOCK();
  return n;
}
