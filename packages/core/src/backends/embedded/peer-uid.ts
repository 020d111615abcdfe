// Moved to net/peer-uid.ts (the nftables backend asks it too, for UDP flows' fair share);
// kept here so the embedded backend's files and tests name it where they always did.
export { tcpPeerUid, udpPeerUid } from '../../net/peer-uid.js';
