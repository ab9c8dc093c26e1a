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
#include <protobuf-c/protobuf-c.h>

/* malloc that remembers the size, so the free can wipe it. */
void *mem_alloc_secret(size_t len);
/* Wipes the whole block, then frees it. NULL is fine. */
void mem_free_secret(void *p);
/* Wipes len bytes at p (never optimised away). */
void mem_wipe(void *p, size_t len);

extern ProtobufCAllocator mem_protobuf_allocator;

#endif
