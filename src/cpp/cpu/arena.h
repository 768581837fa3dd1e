// Per-thread scratch memory, grown on demand and kept between calls, so that a decoder step
// allocates nothing after its first call. Returns nullptr when the memory cannot be had; the
// kernel then reports failure to its front door, which raises MemoryError.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <new>

namespace attnkit::cpu::ATTNKIT_ISA {

inline void* thread_scratch(std::size_t bytes) {
  struct Arena {
    std::unique_ptr<char[]> buf;
    std::size_t capacity = 0;
  };
  thread_local Arena arena;
  if (arena.capacity < bytes) {
    arena.buf.reset();
    arena.capacity = 0;
    // Grow by half again so that slowly increasing sizes do not reallocate on every call.
    const std::size_t want = bytes + bytes / 2 + 256;
    arena.buf.reset(new (std::nothrow) char[want]);
    if (!arena.buf) return nullptr;
    arena.capacity = want;
  }
  return arena.buf.get();
}

// Carves typed, 64-byte aligned sub-buffers out of one scratch block.
class ScratchLayout {
 public:
  template <typename T> std::size_t add(std::size_t count) {
    std::size_t at = (size_ + 63) & ~std::size_t(63);
    size_ = at + count * sizeof(T);
    return at;
  }
  std::size_t bytes() const { return size_ + 64; }

 private:
  std::size_t size_ = 0;
};

template <typename T> inline T* at(void* base, std::size_t offset) {
  char* aligned = reinterpret_cast<char*>((reinterpret_cast<std::uintptr_t>(base) + 63) & ~std::uintptr_t(63));
  return reinterpret_cast<T*>(aligned + offset);
}

}  // namespace attnkit::cpu::ATTNKIT_ISA
