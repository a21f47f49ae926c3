// Symbol visibility for libkvclient: the shared library exports only what is marked.
#pragma once

#if defined(KVCLIENT_SHARED_BUILD)
#define KVCLIENT_EXPORT __attribute__((visibility("default")))
#else
#define KVCLIENT_EXPORT
#endif
