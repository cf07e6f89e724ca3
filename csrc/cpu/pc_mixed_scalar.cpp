// pc_mixed plane kernels compiled for scalar (CMakeLists.txt sets this file's -m flags).
#include "cpu/pc_mixed_planes.h"

namespace fusenas {
namespace cpu {

const PcPlaneKernels& pc_plane_kernels_scalar() {
  static const PcPlaneKernels kernels = PcPlanes<VecScalar>::table();
  return kernels;
}

}  // namespace cpu
}  // namespace fusenas
