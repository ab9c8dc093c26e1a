/*
 * ctlclient: the two small blocking clients `p11kms status` and `p11kms
 * reload` use to ask a running daemon how it is: an HTTP/1.0 GET on the ops
 * endpoint, and a KMS v2 Status call over the KMS socket (HTTP/2 prior
 * knowledge + gRPC framing, as kube-apiserver sends it). Both take a
 * deadline in milliseconds, never block past it, and say what went wrong
 * in err ("connect /run/p11kms/kms.sock: No such file or directory").
 * Not for the daemon itself: its loop never blocks.
 */
#ifndef P11KMS_CTLCLIENT_H
#define P11KMS_CTLCLIENT_H

#include <stddef.h>

#define CTL_BODY_MAX	(1024 * 1024)	/* longest ops body accepted */

/*
 * GET path from addr (the --ops-listen forms: HOST:PORT, [V6]:PORT, :PORT,
 * unix:/path, unix:@name). On 0, *status is the HTTP status and *body a
 * NUL-terminated copy of the body (caller frees). -1 with err on failure;
 * *body is then NULL.
 */
int ctl_http_get(const char *addr, const char *path, int timeout_ms,
    int *status, char **body, char *err, size_t errlen);

struct ctl_kms_status {
	char version[64];
	char healthz[1024];
	char key_id[1025];
};

/*
 * KMS v2 Status over the unix socket at socket_path ("@name": abstract).
 * 0 with *out filled; -1 with err when unreachable, or when the call fails
 * (gRPC status and message in err).
 */
int ctl_kms_status(const char *socket_path, int timeout_ms,
    struct ctl_kms_status *out, char *err, size_t errlen);

#endif
