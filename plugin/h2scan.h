/*
 * h2scan: splits a client's HTTP/2 byte stream into frames just far enough
 * to drop one thing nghttp2 would kill the connection for: RST_STREAM on a
 * stream the client never opened. grpc-core sends that when a call's
 * deadline expires before its HEADERS went out; RFC 9113 makes it a
 * connection error, which would fail every other call on the connection.
 * Only frame boundaries are parsed; nghttp2 checks everything else. One
 * scanner per connection, on the loop thread.
 */
#ifndef P11KMS_H2SCAN_H
#define P11KMS_H2SCAN_H

#include <stddef.h>
#include <stdint.h>

#define H2SCAN_PREFACE_LEN	24	/* "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" */
#define H2SCAN_FRAME_HDR	9

struct h2scan {
	size_t preface_left;		/* client preface bytes still to pass */
	uint8_t hdr[H2SCAN_FRAME_HDR];	/* frame header being collected */
	size_t hdr_have;
	size_t payload_left;		/* of the current frame */
	int dropping;			/* current frame is discarded */
	uint32_t max_stream;		/* highest stream id with HEADERS */
};

/* A scanner at the start of a connection (the preface comes first). */
void h2scan_init(struct h2scan *sc);

/*
 * Copies in (n bytes) to out, which has room for n + H2SCAN_FRAME_HDR
 * bytes, without the frames to drop; returns the bytes written. Frames may
 * be split anywhere across calls.
 */
size_t h2scan_filter(struct h2scan *sc, const uint8_t *in, size_t n,
    uint8_t *out);

#endif
