"""Hand-written GPU kernels for the Monarch multiply.

`triton_monarch` holds the fused Triton kernels behind `MoReConfig(kernel="triton")` and behind
`kernel="auto"` on CUDA where they measure faster. It is imported lazily (by `more.dispatch`, only when a
call may use it), so `import more` never needs triton, and TRITON_INTERPRET can still be set first.
"""

