/*
 * metrics: the process-wide Prometheus registry behind /metrics.
 *
 * Threading contract: every metrics_* recording function may be called from
 * any thread (the loop, token workers, the ops HTTP thread) at any time,
 * before or without an ops server. Recording is a few relaxed atomic adds on
 * static storage: no lock, no allocation, no system call. metrics_set_key_id
 * (rare) takes a short mutex. metrics_render reads a consistent-enough
 * snapshot (each value atomically; a histogram's _count always equals its
 * +Inf bucket).
 *
 * Label cardinality is bounded by fixed tables: an unknown gRPC service or
 * method is recorded as "other", an unknown PKCS#11 function as "other",
 * and at most METRICS_RV_SLOTS distinct CK_RV values are kept, the rest
 * counted under rv="other". Nothing a peer sends can create a series.
 *
 * Metric names (Prometheus text format 0.0.4):
 *   p11kms_build_info{version}                              gauge, 1
 *   p11kms_start_time_seconds                               gauge
 *   p11kms_grpc_requests_total{service,method,code}         counter
 *   p11kms_grpc_request_duration_seconds{service,method}    histogram
 *   p11kms_grpc_requests_in_flight                          gauge
 *   p11kms_grpc_connections                                 gauge
 *   p11kms_pkcs11_call_duration_seconds{function,rv}        histogram
 *   p11kms_token_up{token}                                  gauge, 0/1
 *   p11kms_token_state_changes_total                        counter
 *   p11kms_pool_workers                                     gauge
 *   p11kms_pool_busy_workers                                gauge
 *   p11kms_pool_queued_jobs                                 gauge
 *   p11kms_active_key_info{key_id}                          gauge, 1
 *   p11kms_reloads_total{result}                            counter, ok|failed
 *   p11kms_last_reload_success_timestamp_seconds            gauge
 *   p11kms_last_reload_successful                           gauge, 0/1
 *   p11kms_audit_records_written_total                      counter
 *   p11kms_audit_records_lost_total                         counter
 *   p11kms_audit_write_errors_total                         counter
 *   p11kms_audit_truncations_total                          counter
 *   p11kms_audit_queue_depth                                gauge
 */
#ifndef P11KMS_METRICS_H
#define P11KMS_METRICS_H

#include <stddef.h>

#define METRICS_CONTENT_TYPE	"text/plain; version=0.0.4; charset=utf-8"
#define METRICS_RV_SLOTS	8	/* distinct CK_RV label values kept */

#define METRICS_MAX_SERVICES	4
#define METRICS_MAX_METHODS	8

/*
 * Declares a service and method the request metrics know (the KMS method
 * tables, kms_metrics_register()); others count as "other". Names must
 * outlive the process. Call before any thread records or renders.
 * Returns 0, or -1 when the tables are full.
 */
int metrics_add_method(const char *service, const char *method);

/*
 * One finished gRPC call. service and method as declared with
 * metrics_add_method ("v2.KeyManagementService", "Encrypt"); grpc_code: enum grpc_code (0..16; others count as UNKNOWN);
 * seconds: from the end of the request to the reply being queued.
 */
void metrics_request(const char *service, const char *method, int grpc_code,
    double seconds);
/* The same, from a request path ("/v2.KeyManagementService/Encrypt"). Any
 * path that is not a known method counts as service="other",
 * method="other"; NULL is fine. */
void metrics_request_path(const char *path, int grpc_code, double seconds);

/*
 * One PKCS#11 call: function is the PKCS#11 name ("C_Encrypt"), rv the
 * CK_RV it returned as a number, seconds its duration.
 */
void metrics_token_call(const char *function, unsigned long rv,
    double seconds);
/*
 * How rv label values are spelt at render time ("CKR_OK"). Without a namer,
 * or when it returns NULL, rv renders as "0x%08lx". token_rv_name()
 * (pkcs11/token.h) has the right type: CK_RV is unsigned long. The namer
 * runs on the HTTP thread and must be thread-safe.
 */
void metrics_set_rv_namer(const char *(*namer)(unsigned long rv));

/* 1 while the daemon serves (every key has a healthy token), else 0.
 * Counts changes. */
void metrics_set_token_up(int up);
/*
 * The tokens holding the keys (one, or each replica), named by their
 * label: p11kms_token_up{token=NAME} for each (n 0: one series without a
 * label, from metrics_set_token_up). Copied. Loop thread.
 */
#define METRICS_MAX_TOKENS	4
#define METRICS_TOKEN_NAME_MAX	72
void metrics_set_tokens(const char *const *names, size_t n);
/* Token i's last round trip succeeded (1) or not (0). */
void metrics_set_replica_up(size_t i, int up);
/* Token worker pool: threads, threads running a job, jobs waiting. */
void metrics_set_pool(unsigned workers, unsigned busy, unsigned queued);
/* gRPC server: open connections and calls accepted but not finished. */
void metrics_set_grpc(unsigned connections, unsigned active_calls);
/* key_id of the key that encrypts (copied; NULL or "" removes the series). */
void metrics_set_key_id(const char *key_id);

/*
 * A reload finished: ok 1 or 0, when = wall-clock seconds since the epoch
 * (kept only for a success).
 */
void metrics_reload(int ok, double when);

/*
 * The audit log (--audit-log); rendered only after metrics_audit_enable().
 * Counters: records written, records lost, failed writes/syncs/opens,
 * truncations found; gauge: records queued.
 */
void metrics_audit_enable(void);
void metrics_audit_written(unsigned long n);
void metrics_audit_lost(unsigned long n);
void metrics_audit_write_error(void);
void metrics_audit_truncated(void);
void metrics_audit_queue(unsigned depth);

/*
 * Renders every metric in the Prometheus text format 0.0.4 into a new
 * NUL-terminated buffer *buf of *len bytes (without the NUL). Returns 0, or
 * -1 when out of memory (*buf NULL). Caller frees *buf with free().
 */
int metrics_render(char **buf, size_t *len);

/* Zeroes every metric (tests only; not safe against concurrent recording). */
void metrics_reset(void);

#endif
