/*
 * audit_int: what the audit log's two halves share, internal to
 * plugin/audit_format.c (the bytes: records, chain, lines) and
 * plugin/audit.c (the queue, the writer thread, the file). The functions
 * are pure: any thread may call them.
 */
#ifndef P11KMS_AUDIT_INT_H
#define P11KMS_AUDIT_INT_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>
#include <sys/types.h>

#include <openssl/evp.h>

#include "plugin/audit.h"

/*
 * audit_line with a digest context and SHA-256 the caller keeps (the
 * writer fetches them once). A digest failure gives a chain value no
 * verifier accepts.
 */
size_t audit_line_ctx(EVP_MD_CTX *c, const EVP_MD *md, uint64_t seq,
    const char *body, size_t len, uint8_t prev[AUDIT_CHAIN_LEN], char *out,
    size_t cap);
/*
 * The body of one of the log's own records: "ts", "type", the fields in
 * extra (already JSON, `"k":v,…`; "" for none), "prev_chain" (the hex of
 * prev). Returns its length, 0 when cap is too small.
 */
size_t audit_encode_own(const struct timespec *ts, const char *type,
    const char *extra, const uint8_t prev[AUDIT_CHAIN_LEN], char *out,
    size_t cap);
/*
 * The fields of an "open" record: "reason", "file", "pid". Returns their
 * length; 0 with out "" when cap is too small.
 */
size_t audit_open_fields(const char *reason, const char *path, pid_t pid,
    char *out, size_t cap);

/*
 * A request record as the loop thread queues it: the event copied into
 * out (its strings cut where audit_encode would not read further), so
 * the writer thread, not the loop, makes the JSON. audit_pack returns
 * the length used (at most AUDIT_PACK_MAX, never 0). audit_unpack fills
 * ev with pointers into p (which must outlive ev): 0, or -1 when p is not
 * a whole packed record.
 */
#define AUDIT_PACK_MAX	2560
size_t audit_pack(const struct audit_event *ev, char out[AUDIT_PACK_MAX]);
int audit_unpack(const char *p, size_t len, struct audit_event *ev);

#endif
