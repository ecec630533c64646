/*
 * glibc_banner: this process runs the patched glibc, not the distribution's.
 * patches/glibc/0001-csu-xsc-banner-marker.patch adds a line to libc.so.6's
 * banner and no symbol, so the proof is in the bytes: find the libc.so.6 the
 * dynamic loader actually mapped into this process and look for the line in
 * its loaded segments.  Also check that the running glibc is the version the
 * headers we were compiled against (the image's libc6-dev) announce.
 */
#define _GNU_SOURCE
#include <elf.h>
#include <gnu/libc-version.h>
#include <link.h>
#include <stdio.h>
#include <string.h>

#define MARKER "XSC extensions: xsc-glibc"

struct found {
	const char *path;	/* libc.so.6 as the loader names it */
	int copies;		/* more than one would be a broken setup */
	int marker;		/* MARKER is in its readable PT_LOAD segments */
};

static int visit(struct dl_phdr_info *info, size_t size, void *data)
{
	struct found *f = data;
	const char *base = strrchr(info->dlpi_name, '/');
	int i;

	(void)size;	/* the fields used here are in every version of the struct */

	base = base ? base + 1 : info->dlpi_name;
	if (strcmp(base, "libc.so.6") != 0)
		return 0;
	f->path = info->dlpi_name;
	f->copies++;
	for (i = 0; i < info->dlpi_phnum; i++) {
		const ElfW(Phdr) *ph = &info->dlpi_phdr[i];

		/* The banner is in .rodata: a read-only PT_LOAD, mapped whole. */
		if (ph->p_type == PT_LOAD && (ph->p_flags & PF_R) &&
		    memmem((const void *)(info->dlpi_addr + ph->p_vaddr), ph->p_filesz,
			   MARKER, sizeof(MARKER) - 1))
			f->marker = 1;
	}
	return 0;
}

int main(void)
{
	struct found f = { 0 };
	char want[32];
	const char *have = gnu_get_libc_version();

	printf("1..2\n");
	dl_iterate_phdr(visit, &f);
	if (f.copies != 1) {
		printf("not ok 1 - one libc.so.6 is mapped\n");
		fprintf(stderr, "glibc_banner: %d copies of libc.so.6 mapped\n", f.copies);
		return 1;
	}
	if (f.marker) {
		printf("ok 1 - %s carries \"" MARKER "\"\n", f.path);
	} else {
		printf("not ok 1 - %s carries \"" MARKER "\"\n", f.path);
		fprintf(stderr, "glibc_banner: %s has no \"" MARKER "\" line: "
			"this is not isobuild's patched glibc\n", f.path);
	}

	snprintf(want, sizeof(want), "%d.%d", __GLIBC__, __GLIBC_MINOR__);
	if (strcmp(have, want) == 0) {
		printf("ok 2 - running glibc %s is the headers' %s\n", have, want);
	} else {
		printf("not ok 2 - running glibc %s is the headers' %s\n", have, want);
		fprintf(stderr, "glibc_banner: running glibc %s, compiled against %s headers\n",
			have, want);
	}
	return !(f.marker && strcmp(have, want) == 0);
}
