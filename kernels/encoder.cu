// encoder.cu: the token embedding, forward beside backward.
#include "common.cuh"

// encoder_forward gathers rows: out[n,:] = wte[tokens[n],:]. Grid-stride over N*C.
KERNEL void encoder_forward(float* out, const float* wte, const int* tokens, int N, int C) {
    FOR_EACH(i, (long long)N * C) {
        long long n = i / C, c = i % C;
        out[i] = wte[(long long)tokens[n] * C + c];
    }
}

// encoder_forward_bf16 gathers rows of a bfloat16 table (raw bits), widened
// exactly: out[n,:] = wte[tokens[n],:] << 16.
KERNEL void encoder_forward_bf16(float* out, const unsigned short* wte, const int* tokens, int N, int C) {
    FOR_EACH(i, (long long)N * C) {
        long long n = i / C, c = i % C;
        out[i] = __uint_as_float((unsigned int)wte[(long long)tokens[n] * C + c] << 16);
    }
}

// encoder_backward scatters: dwte[tokens[n],c] += dout[n,c]. One thread per
// column c walks the rows in order, so repeated tokens never race and the
// sum order is the reference's (bit for bit equal to the CPU backend).
KERNEL void encoder_backward(float* dwte, const float* dout, const int* tokens, int N, int C) {
    FOR_EACH(c, C) {
        for (int n = 0; n < N; n++) dwte[(long long)tokens[n] * C + c] += dout[(long long)n * C + c];
    }
}
