/*
 * mem: allocations that are wiped on free (mem.h). A size header in front
 * of each block lets mem_free_secret() OPENSSL_cleanse all of it; the
 * protobuf-c allocator uses the same pair so unpacked DEKs are wiped too.
 */
#include "plugin/mem.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
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

void *
mem_realloc_secret(void *ptr, size_t size)
{
	void *n;
	size_t old;

	if (ptr == NULL)
		return mem_alloc_secret(size);
	if (size == 0) {
		mem_free_secret(ptr);
		return NULL;
	}
	old = *(size_t *)(void *)((unsigned char *)ptr - MEM_HDR);
	if ((n = mem_alloc_secret(size)) == NULL)
		return NULL;
	memcpy(n, ptr, old < size ? old : size);
	mem_free_secret(ptr);
	return n;
}

static void *
h2_malloc(size_t size, void *data)
{
	(void)data;
	return mem_alloc_secret(size);
}

static void
h2_free(void *ptr, void *data)
{
	(void)data;
	mem_free_secret(ptr);
}

static void *
h2_calloc(size_t nmemb, size_t size, void *data)
{
	void *p;

	(void)data;
	if (size != 0 && nmemb > SIZE_MAX / size)
		return NULL;
	if ((p = mem_alloc_secret(nmemb * size)) != NULL)
		memset(p, 0, nmemb * size);
	return p;
}

static void *
h2_realloc(void *ptr, size_t size, void *data)
{
	(void)data;
	return mem_realloc_secret(ptr, size);
}

nghttp2_mem mem_nghttp2 = {
	.mem_user_data = NULL,
	.malloc = h2_malloc,
	.free = h2_free,
	.calloc = h2_calloc,
	.realloc = h2_realloc,
};
