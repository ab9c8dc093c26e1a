/*
 * mem: allocations that are wiped on free (mem.h). A size header in front
 * of each block lets mem_free_secret() OPENSSL_cleanse all of it; the
 * protobuf-c allocator uses the same pair so unpacked DEKs are wiped too.
 */
#include "plugin/mem.h"

#include <stdint.h>
#include <stdlib.h>
#include <openssl/crypto.h>

/*
 * Each block carries its size in a header of max_align_t size, so the
 * allocation the caller sees stays suitably aligned.
 */
#define MEM_HDR	sizeof(max_align_t)

void *
mem_alloc_secret(size_t len)
{
	unsigned char *p;

	if (len > SIZE_MAX - MEM_HDR)
		return NULL;
	if ((p = malloc(MEM_HDR + len)) == NULL)
		return NULL;
	*(size_t *)(void *)p = len;
	return p + MEM_HDR;
}

void
mem_free_secret(void *ptr)
{
	unsigned char *p;

	if (ptr == NULL)
		return;
	p = (unsigned char *)ptr - MEM_HDR;
	OPENSSL_cleanse(p, MEM_HDR + *(size_t *)(void *)p);
	free(p);
}

void
mem_wipe(void *p, size_t len)
{
	if (p != NULL && len > 0)
		OPENSSL_cleanse(p, len);
}

static void *
pb_alloc(void *data, size_t size)
{
	(void)data;
	return mem_alloc_secret(size);
}

static void
pb_free(void *data, void *ptr)
{
	(void)data;
	mem_free_secret(ptr);
}

ProtobufCAllocator mem_protobuf_allocator = {
	.alloc = pb_alloc,
	.free = pb_free,
	.allocator_data = NULL,
};
