// Defines the four symbols that libzt 1.8.4's CPython 3.9 wheel (_libzt.cpython-39-x86_64-linux-gnu.so)
// leaves undefined, so that its C API (zts_*) can be loaded with ctypes into another Python (3.11).
// Load this object first with RTLD_GLOBAL, then the wheel's .so.
//
// - ZeroTier::LinuxNetLink: the wheel calls into a netlink helper that was not linked in; libzt never owns a
//   kernel interface, so the constructor, destructor and delRoute do nothing.
// - _PyTime_AsTimeval_noraise: a CPython 3.9 private function that 3.11 no longer exports; only the SWIG
//   socket-timeout wrappers would call it.
#include <stdint.h>
#include <sys/time.h>

namespace ZeroTier {
class InetAddress;
class LinuxNetLink {
  public:
    LinuxNetLink();
    ~LinuxNetLink();
    void delRoute(const InetAddress& target, const InetAddress& via, const InetAddress& src, const char* ifaceName);
};
LinuxNetLink::LinuxNetLink() {}
LinuxNetLink::~LinuxNetLink() {}
void LinuxNetLink::delRoute(const InetAddress&, const InetAddress&, const InetAddress&, const char*) {}
}  // namespace ZeroTier

extern "C" int _PyTime_AsTimeval_noraise(int64_t t, struct timeval* tv, int round)
{
    (void)round;  // nanoseconds, truncated toward negative infinity
    int64_t sec = t / 1000000000;
    int64_t ns = t % 1000000000;
    if (ns < 0) {
        ns += 1000000000;
        sec -= 1;
    }
    tv->tv_sec = (time_t)sec;
    tv->tv_usec = (suseconds_t)(ns / 1000);
    return 0;
}
