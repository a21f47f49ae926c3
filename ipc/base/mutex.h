// Mutex, MutexLock and CondVar: std::mutex and std::condition_variable with clang's
// thread-safety annotations, so that `-Wthread-safety` (on in every clang build, an error in CI)
// proves each member marked KVT_GUARDED_BY(mu_) is touched only with mu_ held and each function
// marked KVT_REQUIRES(mu_) is called only with it held. libstdc++'s own types carry no
// annotations, which is why kvtier wraps them instead of annotating call sites. Under GCC the
// macros expand to nothing and the classes are the std types with another name.
//
//   mutable Mutex mu_;
//   std::vector<Job> inbox_ KVT_GUARDED_BY(mu_);
//   void Drain() KVT_REQUIRES(mu_);
//   { MutexLock lock(mu_); inbox_.push_back(job); }
//   { MutexLock lock(mu_); while (inbox_.empty()) cv_.Wait(mu_); }
//
// Thread-safety: that of std::mutex and std::condition_variable.
#pragma once

#include <chrono>
#include <condition_variable>
#include <mutex>

#if defined(__clang__)
#define KVT_THREAD_ANNOTATION(x) __attribute__((x))
#else
#define KVT_THREAD_ANNOTATION(x)
#endif

#define KVT_CAPABILITY(name) KVT_THREAD_ANNOTATION(capability(name))
#define KVT_SCOPED_CAPABILITY KVT_THREAD_ANNOTATION(scoped_lockable)
#define KVT_GUARDED_BY(mu) KVT_THREAD_ANNOTATION(guarded_by(mu))
#define KVT_PT_GUARDED_BY(mu) KVT_THREAD_ANNOTATION(pt_guarded_by(mu))
#define KVT_REQUIRES(...) KVT_THREAD_ANNOTATION(requires_capability(__VA_ARGS__))
#define KVT_EXCLUDES(...) KVT_THREAD_ANNOTATION(locks_excluded(__VA_ARGS__))
#define KVT_ACQUIRE(...) KVT_THREAD_ANNOTATION(acquire_capability(__VA_ARGS__))
#define KVT_RELEASE(...) KVT_THREAD_ANNOTATION(release_capability(__VA_ARGS__))
#define KVT_TRY_ACQUIRE(...) KVT_THREAD_ANNOTATION(try_acquire_capability(__VA_ARGS__))
#define KVT_ASSERT_CAPABILITY(x) KVT_THREAD_ANNOTATION(assert_capability(x))
#define KVT_NO_THREAD_SAFETY_ANALYSIS KVT_THREAD_ANNOTATION(no_thread_safety_analysis)

namespace kvtier {

class KVT_CAPABILITY("mutex") Mutex {
 public:
  Mutex() = default;
  Mutex(const Mutex&) = delete;
  Mutex& operator=(const Mutex&) = delete;

  void Lock() KVT_ACQUIRE() { mu_.lock(); }
  void Unlock() KVT_RELEASE() { mu_.unlock(); }
  bool TryLock() KVT_TRY_ACQUIRE(true) { return mu_.try_lock(); }
  // Tells the analysis that the caller holds this mutex, where it cannot see it: a helper
  // whose declaration may not name the mutex (a private method in a public header). Checks
  // nothing at run time (std::mutex cannot say who holds it).
  void AssertHeld() const KVT_ASSERT_CAPABILITY(this) {}

 private:
  friend class CondVar;
  std::mutex mu_;
};

// Holds a Mutex for its scope.
class KVT_SCOPED_CAPABILITY MutexLock {
 public:
  explicit MutexLock(Mutex& mu) KVT_ACQUIRE(mu) : mu_(mu) { mu_.Lock(); }
  ~MutexLock() KVT_RELEASE() { mu_.Unlock(); }
  MutexLock(const MutexLock&) = delete;
  MutexLock& operator=(const MutexLock&) = delete;

 private:
  Mutex& mu_;
};

// A condition variable waited on with a Mutex held (the caller's loop re-checks its condition:
// wake-ups may be spurious).
class CondVar {
 public:
  void Wait(Mutex& mu) KVT_REQUIRES(mu) {
    std::unique_lock<std::mutex> lock(mu.mu_, std::adopt_lock);
    cv_.wait(lock);
    lock.release();  // still held: the caller's MutexLock unlocks it
  }
  // False when `timeout` passed without a notification.
  template <class Rep, class Period>
  bool WaitFor(Mutex& mu, std::chrono::duration<Rep, Period> timeout) KVT_REQUIRES(mu) {
    std::unique_lock<std::mutex> lock(mu.mu_, std::adopt_lock);
    const bool notified = cv_.wait_for(lock, timeout) == std::cv_status::no_timeout;
    lock.release();
    return notified;
  }
  void NotifyOne() { cv_.notify_one(); }
  void NotifyAll() { cv_.notify_all(); }

 private:
  std::condition_variable cv_;
};

}  // namespace kvtier
