/*
 * pbscan: a walk of a protobuf message's top-level fields (pbscan.h), to
 * refuse what protobuf-c would silently accept (a string field holding a
 * NUL byte). Bounds are checked against what remains, never by adding.
 */
#include "plugin/pbscan.h"

#include <string.h>

/* Reads a varint at *off; -1 when truncated or longer than 10 bytes. */
static int
varint(const uint8_t *p, size_t len, size_t *off, uint64_t *out)
{
	uint64_t v = 0;
	unsigned shift;

	for (shift = 0; shift < 70; shift += 7) {
		if (*off >= len)
			return -1;
		v |= (uint64_t)(p[*off] & 0x7f) << shift;
		if ((p[(*off)++] & 0x80) == 0) {
			*out = v;
			return 0;
		}
	}
	return -1;
}

int
pbscan_nul_in_strings(const ProtobufCMessageDescriptor *desc,
    const uint8_t *msg, size_t len)
{
	/* Recursion follows the schema, not the input: the KMS messages
	 * nest one level (map entries). */
	const ProtobufCFieldDescriptor *f;
	uint64_t key, n;
	size_t off = 0;

	while (off < len) {
		if (varint(msg, len, &off, &key) != 0)
			return -1;
		switch (key & 7) {
		case 0:		/* varint */
			if (varint(msg, len, &off, &n) != 0)
				return -1;
			break;
		case 1:		/* 64-bit */
			if (len - off < 8)
				return -1;
			off += 8;
			break;
		case 5:		/* 32-bit */
			if (len - off < 4)
				return -1;
			off += 4;
			break;
		case 2:		/* length-delimited */
			if (varint(msg, len, &off, &n) != 0 || n > len - off)
				return -1;
			f = key >> 3 <= UINT32_MAX ?
			    protobuf_c_message_descriptor_get_field(desc,
			    (unsigned)(key >> 3)) : NULL;
			if (f != NULL && f->type == PROTOBUF_C_TYPE_STRING &&
			    strcmp(f->name, "uid") != 0 && memchr(msg + off, '\0', (size_t)n) != NULL)
				return (int)f->id;
			/* Map entries and other messages: their strings too. */
			if (f != NULL && f->type == PROTOBUF_C_TYPE_MESSAGE) {
				int r = pbscan_nul_in_strings(f->descriptor,
				    msg + off, (size_t)n);
				if (r != 0)
					return r < 0 ? r : (int)f->id;
			}
			off += (size_t)n;
			break;
		default:	/* groups are not proto3 */
			return -1;
		}
	}
	return 0;
}
