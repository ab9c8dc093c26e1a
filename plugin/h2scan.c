/*
 * h2scan: the frame-boundary filter in front of nghttp2 (contract in
 * h2scan.h).
 */
#include "plugin/h2scan.h"

#include <string.h>

#define H2_HEADERS	0x1
#define H2_RST_STREAM	0x3

void
h2scan_init(struct h2scan *sc)
{
	memset(sc, 0, sizeof(*sc));
	sc->preface_left = H2SCAN_PREFACE_LEN;
}

size_t
h2scan_filter(struct h2scan *sc, const uint8_t *in, size_t n, uint8_t *out)
{
	size_t o = 0, k;
	uint32_t sid;

	while (n > 0) {
		if (sc->preface_left > 0 || sc->payload_left > 0) {
			k = sc->preface_left > 0 ? sc->preface_left :
			    sc->payload_left;
			if (k > n)
				k = n;
			if (!sc->dropping || sc->preface_left > 0) {
				memcpy(out + o, in, k);
				o += k;
			}
			if (sc->preface_left > 0)
				sc->preface_left -= k;
			else
				sc->payload_left -= k;
			in += k;
			n -= k;
			continue;
		}
		sc->hdr[sc->hdr_have++] = *in++;
		n--;
		if (sc->hdr_have < sizeof(sc->hdr))
			continue;
		sc->hdr_have = 0;
		sc->payload_left = (size_t)sc->hdr[0] << 16 |
		    (size_t)sc->hdr[1] << 8 | sc->hdr[2];
		sid = ((uint32_t)sc->hdr[5] << 24 | (uint32_t)sc->hdr[6] << 16 |
		    (uint32_t)sc->hdr[7] << 8 | sc->hdr[8]) & 0x7fffffffu;
		if (sc->hdr[3] == H2_HEADERS && sid > sc->max_stream)
			sc->max_stream = sid;
		/*
		 * Only a well-formed one (length 4, RFC 9113 6.4): any other
		 * goes to nghttp2, which closes the connection for it, rather
		 * than the scanner swallowing up to 16 MiB behind a bad header.
		 */
		sc->dropping = sc->hdr[3] == H2_RST_STREAM && sid != 0 &&
		    sid > sc->max_stream && sc->payload_left == 4;
		if (!sc->dropping) {
			memcpy(out + o, sc->hdr, sizeof(sc->hdr));
			o += sizeof(sc->hdr);
		}
	}
	return o;
}
