/*
 * xsc_version: /dev/xsc answers XSC_IOC_GET_VERSION with the version of the
 * <linux/xsc.h> this test was compiled against.  isobuild compiles it against
 * the image's own linux-libc-dev, so a series whose header and driver disagree
 * (say, a bumped XSC_VERSION_MINOR the driver does not serve) fails here.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>
#include <linux/xsc.h>

static int failed;

static void check(int n, int ok, const char *what)
{
	printf("%s %d - %s\n", ok ? "ok" : "not ok", n, what);
	if (!ok)
		failed = 1;
}

int main(void)
{
	struct xsc_version v;
	unsigned int i;
	int fd, reserved_zero = 1;

	printf("1..4\n");
	fd = open("/dev/xsc", O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		fprintf(stderr, "xsc_version: open /dev/xsc: %s\n", strerror(errno));
		printf("not ok 1 - XSC_IOC_GET_VERSION with flags 0\n");
		return 1;
	}
	/* Poison the output fields so "zero" below means the kernel wrote zero. */
	memset(&v, 0xa5, sizeof(v));
	v.flags = 0;
	if (ioctl(fd, XSC_IOC_GET_VERSION, &v) != 0) {
		fprintf(stderr, "xsc_version: XSC_IOC_GET_VERSION: %s\n", strerror(errno));
		printf("not ok 1 - XSC_IOC_GET_VERSION with flags 0\n");
		return 1;
	}
	close(fd);
	check(1, 1, "XSC_IOC_GET_VERSION with flags 0");

	check(2, v.major == XSC_VERSION_MAJOR && v.minor == XSC_VERSION_MINOR,
	      "major.minor match the header");
	check(3, v.patch == XSC_VERSION_PATCH, "patch matches the header");
	for (i = 0; i < sizeof(v.reserved) / sizeof(v.reserved[0]); i++)
		if (v.reserved[i] != 0)
			reserved_zero = 0;
	check(4, reserved_zero, "reserved[] is zero");

	if (failed)
		fprintf(stderr, "xsc_version: kernel says %u.%u.%u (reserved %#x %#x %#x), "
			"header says %u.%u.%u\n", v.major, v.minor, v.patch,
			v.reserved[0], v.reserved[1], v.reserved[2],
			XSC_VERSION_MAJOR, XSC_VERSION_MINOR, XSC_VERSION_PATCH);
	return failed;
}
