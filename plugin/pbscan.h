/*
 * pbscan: checks protobuf-c cannot make. protobuf-c hands `string` fields
 * back NUL-terminated without their length, so "abc\0def" would read as
 * "abc": a key_id or version with an embedded NUL would compare equal to a
 * shorter one. pbscan walks the top-level fields of the raw message.
 */
#ifndef P11KMS_PBSCAN_H
#define P11KMS_PBSCAN_H

#include <stddef.h>
#include <stdint.h>
#include <protobuf-c/protobuf-c.h>

/*
 * Returns the number of the first top-level field of desc that is a
 * `string` with a NUL in its bytes, or a message (a map entry…) holding
 * such a string; 0 when there is none; -1 when msg is not well-formed
 * protobuf. The uid field is exempt: it is only logged, escaped.
 */
int pbscan_nul_in_strings(const ProtobufCMessageDescriptor *desc,
    const uint8_t *msg, size_t len);

#endif
