/*
 * harden: start-up hardening (harden.h): RLIMIT_CORE 0, PR_SET_DUMPABLE 0,
 * mlockall when RLIMIT_MEMLOCK allows it. Each step reports instead of
 * failing, so a restricted environment still starts and says what is off.
 */
#include "plugin/harden.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>

#ifndef MCL_ONFAULT
#define MCL_ONFAULT	4
#endif

/* ASan/LSan need to ptrace the process and map terabytes of shadow. */
#if defined(__SANITIZE_ADDRESS__)
#define UNDER_SANITIZER	1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define UNDER_SANITIZER	1
#endif
#endif

void
harden_process(char *msg, size_t len)
{
	struct rlimit rl = { 0, 0 };
	const char *core, *dump, *lock;
#ifndef UNDER_SANITIZER
	char lockbuf[128];
#endif

	core = setrlimit(RLIMIT_CORE, &rl) == 0 ? "core dumps off" :
	    "core dumps NOT disabled";
#ifdef UNDER_SANITIZER
	dump = "dumpable (sanitizer build)";
	lock = "memory not locked (sanitizer build)";
#else
	dump = prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) == 0 ?
	    "not dumpable/ptraceable" : "still dumpable";
	/*
	 * Lock only with an unlimited RLIMIT_MEMLOCK: with MCL_FUTURE under
	 * a finite limit, later allocations would fail once it is reached.
	 */
	if (getrlimit(RLIMIT_MEMLOCK, &rl) != 0 || rl.rlim_cur != RLIM_INFINITY) {
		snprintf(lockbuf, sizeof(lockbuf), "memory not locked "
		    "(RLIMIT_MEMLOCK is %llu KiB; set it unlimited, e.g. "
		    "LimitMEMLOCK=infinity, to lock)",
		    (unsigned long long)rl.rlim_cur / 1024);
		lock = lockbuf;
	} else if (mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT) == 0) {
		lock = "memory locked (mlockall)";
	} else {
		snprintf(lockbuf, sizeof(lockbuf), "memory not locked "
		    "(mlockall: %s)", strerror(errno));
		lock = lockbuf;
	}
#endif
	snprintf(msg, len, "hardening: %s, %s, %s", core, dump, lock);
}
