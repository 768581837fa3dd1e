// Plain parameter structs: what a front door hands to a kernel after every check has passed.
// Sizes and strides are 64-bit and counted in elements; the last axis of every tensor is
// contiguous unless a stride for it is given explicitly.
#pragma once
#include <cstdint>

namespace attnkit {

// f16 and bf16 exist on the GPU only (float32 softmax and accumulation); the CPU kernels take
// f32 and f64.
enum class DType : int { f32 = 0, f64 = 1, f16 = 2, bf16 = 3 };

inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::f32: return "float32";
    case DType::f64: return "float64";
    case DType::f16: return "float16";
    default: return "bfloat16";
  }
}

enum class MaskKind : int { none = 0, keep_bool = 1, additive = 2 };

// Scaled dot-product attention, O[b,h,i,:] = softmax_j(scale * Q[b,h,i,:].K[b,h,j,:] + mask) V[b,h,j,:]
struct SdpaParams {
  DType dtype = DType::f32;
  int64_t B = 0, H = 0, Tq = 0, Tk = 0, D = 0, Dv = 0;
  const void* q = nullptr;  // Q[b][h][i][d] at q + b*q_stride[0] + h*q_stride[1] + i*q_stride[2] + d
  const void* k = nullptr;  // K[b][h][j][d]
  const void* v = nullptr;  // V[b][h][j][e]
  void* o = nullptr;        // O[b][h][i][e]
  int64_t q_stride[3] = {}, k_stride[3] = {}, v_stride[3] = {}, o_stride[3] = {};
  // Optional [B,H,Tq,Tk] probabilities, W[b][h][i][j] with j contiguous.
  void* weights = nullptr;
  int64_t w_stride[3] = {};
  // Optional per-batch valid key counts, 0 <= key_lengths[b] <= Tk: keys j >= key_lengths[b] are masked.
  const int64_t* key_lengths = nullptr;
  // Optional mask broadcast to [B,H,Tq,Tk] by strides (0 on broadcast axes): uint8 keep-flags or
  // an additive mask in the compute dtype.
  MaskKind mask_kind = MaskKind::none;
  const void* mask = nullptr;
  int64_t mask_stride[4] = {};
  // Causal: query i sees keys j <= i + causal_offset. 0 is PyTorch's is_causal (the first query
  // aligned with the first key); Tk - Tq aligns the last query with the last key.
  bool causal = false;
  int64_t causal_offset = 0;
  double scale = 1.0;
};

}  // namespace attnkit

namespace attnkit {

// One step of ESPnet-style additive attention with an optional location term, for N rows that
// map onto B prepared utterances (rows[n] = utterance of row n):
//   f[n,t,c] = sum_r sum_j conv_w[c,r,j] * att_in[n,r,t+j-F]      (cross-correlation, zero pad F)
//   e[n,t]   = sum_a gvec[a] tanh(P[rows[n],t,a] + q[n,a] + sum_c f[n,t,c] proj[a,c] + loc_bias[a])
//   w[n,:]   = softmax(scaling * e[n,:]) over t < lengths[rows[n]], 0 beyond
//   ctx[n,:] = sum_t w[n,t] values[rows[n],t,:]
// AttAdd has no location term; AttLoc/AttCovLoc/AttLoc2D convolve the previous weights (or the
// coverage sum, or the window); AttCov is the case C = R = K = 1 with proj = wvec.
// Without gvec (null) the energies are dot products, e[n,t] = sum_a P[rows[n],t,a] q[n,a]
// (AttDot, with P and q its tanh projections; no location term).
struct AdditiveStepParams {
  DType dtype = DType::f32;
  int64_t B = 0, T = 0, A = 0, Ev = 0, N = 0;
  int64_t C = 0, R = 0, K = 0;       // location conv: channels, input rows, width (C = 0: none)
  const void* P = nullptr;           // [B][T][A] contiguous, or (dot-product energies) [B][A][T]
  bool P_frames_inner = false;       // P is [b][a][t] at P + b * P_batch_stride + a * T + t
  int64_t P_batch_stride = 0;        // elements between utterances when P_frames_inner
  const void* values = nullptr;      // [B][T][Ev] contiguous
  const int64_t* lengths = nullptr;  // [B], 1 <= lengths[b] <= T
  const int64_t* rows = nullptr;     // [N], 0 <= rows[n] < B
  const void* q = nullptr;           // [N][A]
  const void* att_in = nullptr;      // [N][R][T]
  const void* conv_w = nullptr;      // [C][R][K]
  const void* proj = nullptr;        // [A][C]
  const void* loc_bias = nullptr;    // [A] or null
  const void* gvec = nullptr;        // [A], or null: dot-product energies
  double scaling = 1.0;
  void* context = nullptr;           // [N][Ev]
  void* weights = nullptr;           // [N][T]
  // GPU only: q is computed on the device first, q = dec_z W_dec^T into `query` (then p.q = query),
  // the scaled energies pass from launch to launch in `scratch`, and each row's peak is written.
  const void* dec_z = nullptr;       // [N][Dz]
  const void* w_dec = nullptr;       // [A][Dz]
  int64_t Dz = 0;
  void* query = nullptr;             // [N][A]
  void* scratch = nullptr;           // [N][T]
  int64_t* peak = nullptr;           // [N]: the first frame of the row's largest weight (NaN first)
};

}  // namespace attnkit

namespace attnkit {

// y[n,a] = sum_k x[n,k] w[a,k] (+ bias[a]): a Linear layer for the few rows of a decoder step,
// where calling NumPy's BLAS would wake its own thread pool beside attnkit's.
struct LinearParams {
  DType dtype = DType::f32;
  int64_t N = 0, K = 0, A = 0;
  const void* x = nullptr;     // [N][K] contiguous
  const void* w = nullptr;     // [A][K] contiguous (torch's Linear.weight layout), or packed:
  bool packed = false;         // [ceil(A / P)][K][P], P = kLinearPanelBytes / sizeof(T), zero pad
  bool half_panels = false;    // packed float32 weights stored as float16 bits (uint16), exact
  const void* bias = nullptr;  // [A] or null
  bool tanh = false;           // y = tanh(x w^T + b) (AttDot's projections, ESPnet encoders' l_last)
  void* y = nullptr;           // [N][A] contiguous
};

// Width of a packed weight panel: 64 bytes, 16 float32 or 8 float64 outputs, whatever the ISA
// (one AVX-512 vector, two AVX2 vectors), so a packed weight serves every ISA.
constexpr int64_t kLinearPanelBytes = 64;

// A Linear weight [A][K] (contiguous) into the packed panels of LinearParams, rows past A zero.
struct PackLinearParams {
  DType dtype = DType::f32;
  int64_t A = 0, K = 0;
  const void* w = nullptr;  // [A][K]
  void* panels = nullptr;   // [ceil(A / P)][K][P]
};

// The cells of torch.nn.LSTM (G = 4 gates, order i, f, g, o) and torch.nn.GRU (G = 3, r, z, n).
enum class RecurrentCell : int { lstm = 0, gru = 1 };

// One direction of one LSTM or GRU layer over T frames of B rows, from a zero state: per frame t
// (from T-1 down with reverse), rows [0, active[t]) step; a row's state waits while it is
// inactive (rows sorted longest first: forward, a row stops after its last frame; backward, it
// starts at its own last frame from zero).
struct RecurrentLayerParams {
  DType dtype = DType::f32;
  RecurrentCell cell = RecurrentCell::lstm;
  int64_t T = 0, B = 0, H = 0;
  const void* gx = nullptr;        // [T][B][G*H]: x W_ih^T + b_ih
  const void* w_hh = nullptr;      // weight_hh [G*H, H] packed (LinearParams::packed)
  bool w_hh_half = false;          // ... as float16 bits (LinearParams::half_panels)
  const void* b_hh = nullptr;      // [G*H] or null
  const int64_t* active = nullptr; // [T], each in [0, B]
  bool reverse = false;
  void* out = nullptr;             // [T][B][H]: h of the rows that stepped; the rest untouched
};

// One step of an LSTM or GRU cell for N rows from its gate pre-activations (a decoder's or a
// language model's cell; attnkit.asr.rnn.lstm_from_gates / gru_from_gates):
//   lstm: gates = g + gx (gx null: g alone), (i, f, gg, o); c_new = sigmoid(f) c + sigmoid(i)
//         tanh(gg), h_new = sigmoid(o) tanh(c_new);
//   gru:  g = h W_hh^T + b_hh, gx = x W_ih^T + b_ih (both given), (r, z, n); h_new = (1 - z) n + z h.
// Every array is C-contiguous, of one float dtype; the outputs do not overlap the inputs.
struct CellUpdateParams {
  DType dtype = DType::f32;
  RecurrentCell cell = RecurrentCell::lstm;
  int64_t N = 0, H = 0;
  const void* g = nullptr;    // [N][G*H]
  const void* gx = nullptr;   // [N][G*H] or null (lstm only)
  const void* state = nullptr; // [N][H]: c (lstm) or h (gru)
  void* h_new = nullptr;      // [N][H]
  void* c_new = nullptr;      // [N][H] (lstm only)
};

// ESPnet's location convolution of N inputs x [N][R][T] by w [C][R][K] (K = 2F + 1, may exceed T)
// into f [N][C][T]: f[n][c][t] = sum_r sum_j w[c][r][j] x[n][r][t + j - F], x read as 0 outside
// [0, T) (a cross-correlation, as torch's conv). C-contiguous, one float dtype, f not overlapping.
struct LocationConvParams {
  DType dtype = DType::f32;
  int64_t N = 0, R = 0, T = 0, C = 0, K = 0;
  const void* x = nullptr;
  const void* w = nullptr;
  void* f = nullptr;
};

// The attention context of given weights: out[n][e] = sum_{t < L} w[n][t] * values[rows[n]][t][e]
// with L = lengths[rows[n]], or T when lengths is null. w [N][T], values [B][T][Ev], out [N][Ev],
// rows [N] in [0, B), lengths [B] in [0, T]; C-contiguous, one float dtype, out overlapping nothing.
struct WeightedSumParams {
  DType dtype = DType::f32;
  int64_t N = 0, B = 0, T = 0, Ev = 0;
  const void* w = nullptr;
  const void* values = nullptr;
  const int64_t* rows = nullptr;
  const int64_t* lengths = nullptr;
  void* out = nullptr;
};

// log_softmax over each row of x [N][V] into y [N][V] (y may be x), C-contiguous, one float dtype.
struct LogSoftmaxParams {
  DType dtype = DType::f32;
  int64_t N = 0, V = 0;
  const void* x = nullptr;
  void* y = nullptr;
};

}  // namespace attnkit

namespace attnkit {

// CTC prefix scores (Watanabe et al. 2017, Algorithm 2; attnkit.asr.ctc_prefix.prefix_scores) of
// N prefixes x C candidate labels, one lane each, over frames [start, end):
//   phi[t]  = r_blank[t,n] if the candidate repeats the prefix's last label, else r_sum[t,n]
//   r[t,0]  = logaddexp(r[t-1,0], phi[t-1]) + x[t, label_col]   (r^n: the prefix ends in the label)
//   r[t,1]  = logaddexp(r[t-1,0], r[t-1,1]) + x[t, blank_col[n]] (r^b: it ends in a blank)
//   psi     = logsumexp(r[start-1,0], phi[t-1] + x[t, label_col] for start <= t < end)
// r starts as `logzero` everywhere but r[0,0] = x[0, label_col] for the first label; frames outside
// the range keep those values. The kernel gathers its inputs from x's columns (utterance x label)
// and the prefixes' [T, N] rows, so no [T, N, C] copy of them is made per step. Every array is
// C-contiguous; the float arrays share one dtype.
struct CtcPrefixParams {
  DType dtype = DType::f32;
  int64_t T = 0, N = 0, C = 0, M = 0;
  const void* x = nullptr;            // [T][M] log-posteriors, a column per (utterance, label)
  const int64_t* label_col = nullptr; // [N][C] the column of each lane's candidate, in [0, M)
  const int64_t* blank_col = nullptr; // [N] the column of each prefix's blank, in [0, M)
  const void* r_sum = nullptr;        // [T][N] logaddexp(r^n, r^b) of the prefixes
  const void* r_blank = nullptr;      // [T][N] r^b of the prefixes
  const uint8_t* repeat = nullptr;    // [N][C] nonzero: the candidate is the prefix's last label
  bool first_label = false;           // the prefixes are empty
  int64_t start = 1, end = 0;         // 1 <= start; end <= T (an empty range when end <= start)
  // GPU only: a [2] device array (start, end) read in place of start and end, so that the CTC
  // window computed on the device needs no host read per step; clamped to 1 <= start, end <= T.
  const int64_t* window = nullptr;
  double logzero = -1e10;
  void* r = nullptr;                  // [T][2][N][C]
  void* psi = nullptr;                // [N][C]
};

}  // namespace attnkit
