"""Wire formats, pure and without I/O: the client line protocol, the peer
messages and the peer handshake (docs/PEER-PROTOCOL.md)."""
