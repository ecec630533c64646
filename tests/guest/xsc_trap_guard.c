/*
 * xsc_trap_guard: with CONFIG_XSC_TRAP_GUARD (patches/kernel/xsc.config turns
 * it on) a request carrying a flag bit the kernel does not know is refused
 * with EINVAL, a request with flags 0 is served, and the features word says
 * XSC_FEATURE_TRAP_GUARD.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>
#include <linux/xsc.h>

/* No request flag is defined yet; the top bit is the least likely ever to be. */
#define XSC_UNKNOWN_FLAG (1U << 31)

static int failed;

static void fail(int n, const char *what, const char *why)
{
	printf("not ok %d - %s\n", n, what);
	fprintf(stderr, "xsc_trap_guard: %s: %s\n", what, why);
	failed = 1;
}

int main(void)
{
	struct xsc_version v;
	const char *t;
	int fd, rc, err;

	printf("1..3\n");
	fd = open("/dev/xsc", O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		fprintf(stderr, "xsc_trap_guard: open /dev/xsc: %s\n", strerror(errno));
		printf("not ok 1 - open /dev/xsc\n");
		return 1;
	}

	t = "unknown flag bit is refused with EINVAL";
	memset(&v, 0, sizeof(v));
	v.flags = XSC_UNKNOWN_FLAG;
	rc = ioctl(fd, XSC_IOC_GET_VERSION, &v);
	err = errno;
	if (rc == 0)
		fail(1, t, "the kernel served it (trap guard not built in?)");
	else if (err != EINVAL)
		fail(1, t, strerror(err));
	else
		printf("ok 1 - %s\n", t);

	t = "flags 0 is served";
	memset(&v, 0, sizeof(v));
	rc = ioctl(fd, XSC_IOC_GET_VERSION, &v);
	err = errno;
	close(fd);
	if (rc != 0) {
		fail(2, t, strerror(err));
		fail(3, "features report XSC_FEATURE_TRAP_GUARD", "no answer to read");
		return 1;
	}
	printf("ok 2 - %s\n", t);

	t = "features report XSC_FEATURE_TRAP_GUARD";
	if (!(v.features & XSC_FEATURE_TRAP_GUARD))
		fail(3, t, "bit clear in the features word");
	else
		printf("ok 3 - %s (features %#x)\n", t, v.features);
	return failed;
}
