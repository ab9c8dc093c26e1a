/*
 * notify: the systemd service notification protocol (sd_notify(3)), without
 * libsystemd. With Type=notify systemd passes NOTIFY_SOCKET, a unix datagram
 * socket (a path, or "@name" for an abstract one); each message is one
 * datagram of newline-separated VAR=value assignments:
 *
 *   READY=1                 serving: socket bound, keys loaded, probe passed
 *   RELOADING=1             a reload started (SIGHUP)
 *   READY=1\nSTATUS=…       the reload ended; STATUS= says how
 *   STOPPING=1              shutting down
 *   WATCHDOG=1              the loop turns (when WATCHDOG_USEC is set)
 *
 * Without NOTIFY_SOCKET every call is a no-op, so the daemon runs the same
 * under any supervisor. notify_init() reads the environment once and
 * unsets NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID so that nothing the
 * daemon starts (a PKCS#11 module's helper) inherits them. Loop thread only.
 */
#ifndef P11KMS_NOTIFY_H
#define P11KMS_NOTIFY_H

#include <stddef.h>
#include <stdint.h>

/*
 * Reads NOTIFY_SOCKET and WATCHDOG_USEC (honoured only when WATCHDOG_PID
 * is unset or ours). Returns 0, or -1 with a message in err when
 * NOTIFY_SOCKET is set but unusable (then notifications are off).
 */
int notify_init(char *err, size_t errlen);
/* Sends one message; 0, or -1 (errno) when a socket is set and the send
 * failed. A no-op returning 0 without NOTIFY_SOCKET. */
int notify_send(const char *msg);
/* The watchdog interval in µs; 0 when systemd asked for none. */
uint64_t notify_watchdog_usec(void);
/* Frees the socket (the daemon's exit). */
void notify_fini(void);

#endif
