/*
 * mem: allocation that wipes. Every buffer that may hold a plaintext, a DEK
 * seed or a decrypted value goes through mem_free_secret(), and protobuf-c
 * unpacks into memory from mem_protobuf_allocator, whose free wipes the
 * whole block (protobuf-c copies `bytes` fields through its allocator, so a
 * plain free would leave DEKs in the heap).
 */
#ifndef P11KMS_MEM_H
#define P11KMS_MEM_H

#include <stddef.h>
#include <nghttp2/nghttp2.h>
#include <protobuf-c/protobuf-c.h>

/* malloc that remembers the size, so the free can wipe it. */
void *mem_alloc_secret(size_t len);
/* Wipes the whole block, then frees it. NULL is fine. */
void mem_free_secret(void *p);
/* Wipes len bytes at p (never optimised away). */
void mem_wipe(void *p, size_t len);

/*
 * Resizes a mem_alloc_secret block: a new block, the old bytes copied, the
 * old block wiped and freed (realloc would leave the old block's bytes in
 * the heap). NULL p allocates; size 0 frees and returns NULL. On failure
 * returns NULL and leaves p as it was.
 */
void *mem_realloc_secret(void *p, size_t size);

extern ProtobufCAllocator mem_protobuf_allocator;
/*
 * nghttp2's allocator (nghttp2_session_server_new3): its buffers hold
 * request and reply DATA, which carry plaintexts and DEKs; every free
 * and every resize wipes.
 */
extern nghttp2_mem mem_nghttp2;

#endif
