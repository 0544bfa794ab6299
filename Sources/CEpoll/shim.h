// Linux epoll for the load harness's event loop (Glibc's Swift module does not export sys/epoll.h).
#include <sys/epoll.h>
