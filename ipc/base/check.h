// KVT_CHECK (all builds) and KVT_DCHECK (debug builds) guard invariants: a failure is a bug in
// kvtier, so it prints where and aborts. Bad input from peers or files is never checked this
// way; it gets a Status.
// KVT_RETURN_IF_ERROR / KVT_ASSIGN_OR_RETURN propagate Status and Result<T>.
#pragma once

#include <cstdio>
#include <cstdlib>

#define KVT_CHECK(cond)                                                                   \
  do {                                                                                    \
    if (!(cond)) [[unlikely]] {                                                           \
      std::fprintf(stderr, "%s:%d: KVT_CHECK(%s) failed\n", __FILE__, __LINE__, #cond); \
      std::abort();                                                                       \
    }                                                                                     \
  } while (false)

#ifdef NDEBUG
#define KVT_DCHECK(cond) \
  do {                   \
  } while (false && (cond))
#else
#define KVT_DCHECK(cond) KVT_CHECK(cond)
#endif

#define KVT_RETURN_IF_ERROR(expr)        \
  do {                                   \
    ::kvtier::Status kvt_status_ = (expr); \
    if (!kvt_status_.ok()) return kvt_status_; \
  } while (false)

#define KVT_CONCAT_INNER(a, b) a##b
#define KVT_CONCAT(a, b) KVT_CONCAT_INNER(a, b)
#define KVT_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                              \
  if (!tmp.ok()) return tmp.status();             \
  lhs = std::move(*tmp)
#define KVT_ASSIGN_OR_RETURN(lhs, expr) \
  KVT_ASSIGN_OR_RETURN_IMPL(KVT_CONCAT(kvt_result_, __LINE__), lhs, expr)
