#!/bin/sh
# Extracts the client Initial test vectors of an RFC's "Sample Packet Protection" appendix
# (its markdown source) into hex files: the CRYPTO frame of the unprotected payload (first
# code block of the "## Client Initial" section) and the protected packet (its last block).
# Usage: extract-rfc-vectors.sh <rfc.md> <prefix>
set -eu
section() { awk '/^## Client Initial/{on=1;next} /^## /{on=0} on' "$1"; }
blocks() { section "$1" | awk '/^~~~/{n++;next} n%2==1{print n":"$0}'; }
first=$(blocks "$1" | head -1 | cut -d: -f1)
last=$(blocks "$1" | tail -1 | cut -d: -f1)
blocks "$1" | awk -F: -v n="$first" '$1==n{sub(/^[^:]*:/,"");print}' | tr -d ' \n' > "$2-crypto-frame.hex"
blocks "$1" | awk -F: -v n="$last" '$1==n{sub(/^[^:]*:/,"");print}' | tr -d ' \n' > "$2-client-initial.hex"
