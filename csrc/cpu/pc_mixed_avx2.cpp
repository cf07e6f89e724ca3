// pc_mixed plane kernels compiled for avx2 (CMakeLists.txt sets this file's -m flags).
#include "cpu/pc_mixed_planes.h"

namespace fusenas {
namespace cpu {

const PcPlaneKernels& pc_plane_kernels_avx2() {
  static const PcPlaneKernels kernels = PcPlanes<VecAvx2>::table();
  return kernels;
}

}  // namespace cpu
}  // namespace fusenas
