#include <cstdio>

#include "launch/commands.h"

namespace tessera {

int RunCommand(int, char**) {
  std::fprintf(stderr, "tessera run: not built yet\n");
  return 1;
}

}  // namespace tessera
