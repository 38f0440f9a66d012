// One capability's table of CPU kernels (kernels.h), compiled once per capability with the
// kernels it lists.
#include "kernels.h"

namespace nnff {
namespace cpu {
namespace NNFF_CPU_LEVEL {

void attention_fwd(const AttentionArgs&, int64_t, int64_t);
void attention_bwd_dq(const AttentionArgs&, int64_t, int64_t);
void attention_bwd_dkdv(const AttentionArgs&, int64_t, int64_t);
void bigin_fwd(const BiginArgs&, int64_t, int64_t);
void bigin_bwd_dz(const BiginArgs&, int64_t, int64_t);
void bigin_bwd_dg(const BiginArgs&, int64_t, int64_t);
void dropout(const DropoutArgs&, int64_t, int64_t);
void add_norm_fwd(const AddNormArgs&, int64_t, int64_t);
void add_norm_bwd(const AddNormArgs&, int64_t, int64_t);

namespace {
const CpuKernels kTable = {attention_fwd, attention_bwd_dq, attention_bwd_dkdv, bigin_fwd,   bigin_bwd_dz,
                           bigin_bwd_dg,  dropout,          add_norm_fwd,       add_norm_bwd};
}  // namespace

const CpuKernels& kernels() { return kTable; }

}  // namespace NNFF_CPU_LEVEL
}  // namespace cpu
}  // namespace nnff
