// pc_mixed plane kernels compiled for avx512 (CMakeLists.txt sets this file's -m flags).
#include "cpu/pc_mixed_planes.h"

namespace fusenas {
namespace cpu {

const PcPlaneKernels& pc_plane_kernels_avx512() {
  static const PcPlaneKernels kernels = PcPlanes<VecAvx512>::table();
  return kernels;
}

}  // namespace cpu
}  // namespace fusenas
