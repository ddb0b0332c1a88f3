//go:build cuda

package kernels

import (
	"embed"
	"errors"
	"fmt"
	"math"
	"runtime"
	"sync"
	"time"
	"unsafe"

	"gorgonia.org/cu"

	"github.com/opencluster/opencluster/quant"
	"github.com/opencluster/opencluster/train/backend"
)

//go:embed *.ptx
var ptxFS embed.FS

// CUDA is the backend.Backend that keeps every buffer in device memory and
// runs every op as one of this package's kernels.
//
// One CUDA context per CUDA value, owned by a goroutine locked to its OS
// thread (the driver API binds a context to a thread): every driver call is
// handed to that goroutine and waited for, so a CUDA may be used from any
// goroutine, though, like the CPU backend, not by several at once for one
// model. Kernels run in order on the context's default stream; ops return
// once their kernel is queued, and Download, CrossEntropy and SumSquares
// wait for the results they return.
//
// Errors: the Backend interface has no error results, so a driver failure
// (out of memory, a failed launch) or a misuse (a buffer of another
// backend, lengths that do not match) panics with an error value that names
// the device, the op and the buffer; the CPU backend panics on misuse too.
// NewCUDA, MemInfo and the Bench helpers return errors.
type CUDA struct {
	ordinal int
	dev     cu.Device
	devName string
	major   int
	minor   int
	arch    int // PTX loaded: 75 or 80
	prec    Precision
	// fp32Backward keeps the backward products in fp32 while the forward
	// ones run in prec (fp16 training on Turing, SetFrozenDType).
	fp32Backward bool
	pciBusID     string // "00000000:65:00.0", as NVML writes it

	th *ctxThread // the context thread

	// Touched only on the context thread.
	ctx     cu.CUContext
	modules []cu.Module
	fns     map[string]cu.Function
	scratch map[string]*devAlloc

	mu      sync.Mutex  // guards the fields below
	cur     int64       // bytes allocated now
	peak    int64       // high-water mark of cur
	pending []*devAlloc // freed by finalizers, released on the context thread
}

// NewCUDA opens device ordinal (0-based, as CUDA numbers them), creates its
// context and loads the PTX for its compute capability. Precision starts at
// FP32 (exact).
func NewCUDA(ordinal int) (*CUDA, error) {
	c := &CUDA{ordinal: ordinal, prec: FP32, fns: map[string]cu.Function{}, scratch: map[string]*devAlloc{}}
	th, err := startThread(c.open, c.release)
	if err != nil {
		return nil, err
	}
	c.th = th
	return c, nil
}

func (c *CUDA) open() error {
	n, err := cu.NumDevices()
	if err != nil {
		return fmt.Errorf("kernels: counting CUDA devices: %w", err)
	}
	if c.ordinal < 0 || c.ordinal >= n {
		return fmt.Errorf("kernels: no CUDA device %d (this machine has %d)", c.ordinal, n)
	}
	if c.dev, err = cu.GetDevice(c.ordinal); err != nil {
		return fmt.Errorf("kernels: cuda:%d: %w", c.ordinal, err)
	}
	c.devName, _ = c.dev.Name()
	if c.major, err = c.dev.Attribute(cu.ComputeCapabilityMajor); err != nil {
		return fmt.Errorf("kernels: cuda:%d: compute capability: %w", c.ordinal, err)
	}
	if c.minor, err = c.dev.Attribute(cu.ComputeCapabilityMinor); err != nil {
		return fmt.Errorf("kernels: cuda:%d: compute capability: %w", c.ordinal, err)
	}
	if c.major < 7 || (c.major == 7 && c.minor < 5) {
		return fmt.Errorf("kernels: cuda:%d (%s) has compute capability %d.%d; the kernels need 7.5 (Turing) or newer", c.ordinal, c.devName, c.major, c.minor)
	}
	c.arch = 75
	if c.major >= 8 {
		c.arch = 80
	}
	if c.pciBusID, err = devicePCIBusID(c.dev); err != nil {
		return fmt.Errorf("kernels: cuda:%d: %w", c.ordinal, err)
	}
	if err := checkDriver(cu.Version(), ptxISA()); err != nil {
		return fmt.Errorf("kernels: cuda:%d (%s): %w", c.ordinal, c.devName, err)
	}
	if c.ctx, err = c.dev.MakeContext(cu.SchedAuto); err != nil {
		return fmt.Errorf("kernels: cuda:%d: creating a context: %w", c.ordinal, err)
	}
	for _, m := range Modules {
		file := fmt.Sprintf("%s.sm%d.ptx", m.Name, c.arch)
		src, err := ptxFS.ReadFile(file)
		if err != nil {
			c.release()
			return fmt.Errorf("kernels: embedded %s: %w", file, err)
		}
		mod, err := cu.LoadData(string(src))
		if err != nil {
			c.release()
			return fmt.Errorf("kernels: cuda:%d: loading %s: %w (%s)", c.ordinal, file, err, driverNeed(ptxISA()))
		}
		c.modules = append(c.modules, mod)
		for _, e := range m.Entries {
			fn, err := mod.Function(e)
			if err != nil {
				c.release()
				return fmt.Errorf("kernels: cuda:%d: kernel %s in %s: %w", c.ordinal, e, file, err)
			}
			c.fns[e] = fn
		}
	}
	return nil
}

// ptxISA is the ISA version of the embedded PTX.
func ptxISA() string {
	src, _ := ptxFS.ReadFile(Modules[0].Name + ".sm80.ptx")
	return ptxVersion(src)
}

// devicePCIBusID reads a device's PCI domain, bus and device numbers.
func devicePCIBusID(d cu.Device) (string, error) {
	var v [3]int
	for i, a := range []cu.DeviceAttribute{cu.PciDomainID, cu.PciBusID, cu.PciDeviceID} {
		n, err := d.Attribute(a)
		if err != nil {
			return "", fmt.Errorf("PCI address: %w", err)
		}
		v[i] = n
	}
	return FormatPCIBusID(v[0], v[1], v[2]), nil
}

// PCIBusIDs lists the PCI address of every device CUDA sees, by ordinal
// (after CUDA_VISIBLE_DEVICES and CUDA_DEVICE_ORDER), so a GPU chosen
// through NVML can be opened by its address.
func PCIBusIDs() ([]string, error) {
	n, err := cu.NumDevices()
	if err != nil {
		return nil, fmt.Errorf("kernels: counting CUDA devices: %w", err)
	}
	ids := make([]string, n)
	for i := range ids {
		d, err := cu.GetDevice(i)
		if err != nil {
			return nil, fmt.Errorf("kernels: cuda:%d: %w", i, err)
		}
		if ids[i], err = devicePCIBusID(d); err != nil {
			return nil, fmt.Errorf("kernels: cuda:%d: %w", i, err)
		}
	}
	return ids, nil
}

// release frees everything the context holds and destroys it.
func (c *CUDA) release() {
	if c.ctx == (cu.CUContext{}) {
		return
	}
	for _, m := range c.modules {
		_ = m.Unload()
	}
	c.modules = nil
	_ = c.ctx.Destroy() // frees every allocation of the context
	c.ctx = cu.CUContext{}
}

// Close waits for queued work and destroys the context; every buffer of
// this backend becomes invalid. Close is idempotent and safe to call while
// other goroutines run ops: those fail with a "closed" error, they never
// hang.
func (c *CUDA) Close() error {
	if err := c.th.stop(func() error { return cu.Synchronize() }); err != nil {
		return fmt.Errorf("kernels: %s: finishing queued work: %w", c.Name(), err)
	}
	return nil
}

// do runs f on the context thread and returns its error; a panic inside f
// comes back as an error instead of killing the context thread.
func (c *CUDA) do(f func() error) error {
	err := c.th.do(func() error {
		c.freePending()
		return f()
	})
	if errors.Is(err, errClosed) {
		return fmt.Errorf("kernels: %s is closed", c.Name())
	}
	return err
}

// must panics when err is set, naming the device and the op.
func (c *CUDA) must(op string, err error) {
	if err != nil {
		panic(fmt.Errorf("kernels: %s: %s: %w", c.Name(), op, err))
	}
}

// Name is "cuda:N".
func (c *CUDA) Name() string { return fmt.Sprintf("cuda:%d", c.ordinal) }

// DeviceName is the GPU's marketing name as the driver reports it.
func (c *CUDA) DeviceName() string { return c.devName }

// ComputeCapability returns the device's major and minor version.
func (c *CUDA) ComputeCapability() (major, minor int) { return c.major, c.minor }

// Arch is the PTX target loaded: 75 or 80.
func (c *CUDA) Arch() int { return c.arch }

// SetPrecision chooses the arithmetic of the matrix products. TF32 and
// BF16 need compute capability 8.0; below it they fall back to FP32 and
// FP16, and the precision in effect is returned.
func (c *CUDA) SetPrecision(p Precision) (Precision, error) {
	if _, err := ParsePrecision(string(p)); err != nil {
		return c.prec, err
	}
	if c.arch < 80 {
		switch p {
		case TF32:
			p = FP32
		case BF16:
			p = FP16
		}
	}
	c.prec, c.fp32Backward = p, false
	return p, nil
}

// SetFrozenDType is the training precision (train.compute_dtype; it makes
// CUDA a backend.FrozenDTyper): fp32 (exact); bf16, tensor cores with fp32
// accumulation on sm_80 and newer; fp16, tensor cores for the forward
// products only, the backward kept in fp32 because fp16's range would
// underflow small gradients (no loss scaling needed), for Turing, which has
// no bf16. ApplyComputeDType's auto picks bf16 where there is bf16, fp16
// on Turing. Buffers, adapters, gradients and AdamW stay fp32 in memory.
func (c *CUDA) SetFrozenDType(dtype string) error {
	switch dtype {
	case backend.ComputeFP32:
		c.prec, c.fp32Backward = FP32, false
	case backend.ComputeBF16:
		if c.arch < 80 {
			return fmt.Errorf("train.compute_dtype bf16: %s (%s, compute capability %d.%d) has no bf16 tensor cores (sm_80 and newer); use fp16 or fp32", c.Name(), c.devName, c.major, c.minor)
		}
		c.prec, c.fp32Backward = BF16, false
	case backend.ComputeFP16:
		c.prec, c.fp32Backward = FP16, true
	default:
		return fmt.Errorf("train.compute_dtype %q: want fp32, bf16 or fp16", dtype)
	}
	return nil
}

// FrozenDType is the training precision in effect.
func (c *CUDA) FrozenDType() string {
	switch c.prec {
	case BF16:
		return backend.ComputeBF16
	case FP16:
		return backend.ComputeFP16
	}
	return backend.ComputeFP32
}

// BF16Available reports bf16 tensor cores (sm_80 and newer).
func (c *CUDA) BF16Available() bool { return c.arch >= 80 }

// FP16Available reports fp16 tensor cores (every device the kernels run on).
func (c *CUDA) FP16Available() bool { return true }

// PCIBusID is the device's PCI address as NVML writes it
// ("00000000:65:00.0"), the key NVML and CUDA agree on.
func (c *CUDA) PCIBusID() string { return c.pciBusID }

// Precision is the matrix-product precision in effect.
func (c *CUDA) Precision() Precision { return c.prec }

// MemInfo reports the device's free and total memory in bytes.
func (c *CUDA) MemInfo() (free, total uint64, err error) {
	err = c.do(func() error {
		f, t, err := cu.MemInfo()
		free, total = uint64(f), uint64(t)
		return err
	})
	if err != nil {
		return 0, 0, fmt.Errorf("kernels: %s: memory info: %w", c.Name(), err)
	}
	return free, total, nil
}

// PeakMemory is the most device memory this backend has held at once in
// buffers it allocated (bytes), since NewCUDA or ResetPeakMemory.
func (c *CUDA) PeakMemory() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.peak
}

// CurrentMemory is the device memory held in live buffers now (bytes).
func (c *CUDA) CurrentMemory() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cur
}

// ResetPeakMemory starts a new high-water mark at the current use.
func (c *CUDA) ResetPeakMemory() {
	c.mu.Lock()
	c.peak = c.cur
	c.mu.Unlock()
}

// Synchronize waits until every queued kernel has finished and reports the
// first asynchronous error (a kernel that faulted).
func (c *CUDA) Synchronize() error {
	if err := c.do(func() error { return cu.Synchronize() }); err != nil {
		return fmt.Errorf("kernels: %s: %w", c.Name(), err)
	}
	return nil
}

// ---------------------------------------------------------------------------
// Device memory.

// devAlloc is one cuMemAlloc. Free releases it at once; otherwise a
// finalizer queues it for freeing once no buffer refers to it any more.
type devAlloc struct {
	ptr   cu.DevicePtr
	bytes int64
	freed bool // by Free; touched only on the context thread
}

// Buffer is the CUDA backend's backend.Buf: a view of n float32s at
// element offset off of a device allocation.
type Buffer struct {
	a      *devAlloc
	off, n int
	owner  *CUDA
}

// Len is the number of float32 elements.
func (b *Buffer) Len() int { return b.n }

// Ptr is the device address of the first element.
func (b *Buffer) Ptr() cu.DevicePtr { return b.a.ptr + cu.DevicePtr(4*b.off) }

// oomRetryWait bounds how long an allocation that ran out of memory waits
// for the finalizers of unreachable buffers before its one retry.
const oomRetryWait = 200 * time.Millisecond

// allocBytes allocates bytes of device memory on the context thread. When
// the device is out of memory it collects garbage, frees the allocations
// whose buffers were unreachable, and retries once; a second failure names
// how much was asked for, how much this backend holds and what is free.
func (c *CUDA) allocBytes(bytes int64) (*devAlloc, error) {
	a := &devAlloc{bytes: bytes}
	if bytes > 0 {
		p, err := cu.MemAlloc(bytes)
		if err != nil && isOOM(err) {
			c.collect()
			p, err = cu.MemAlloc(bytes)
		}
		if err != nil {
			free, total, _ := cu.MemInfo()
			return nil, fmt.Errorf("allocating %d bytes (%.1f MiB; this backend holds %.1f MiB, the device has %.1f of %.1f MiB free): %w",
				bytes, mib(bytes), mib(c.CurrentMemory()), mib(int64(free)), mib(int64(total)), err)
		}
		a.ptr = p
		if err := cu.MemsetD8(p, 0, bytes); err != nil {
			_ = cu.MemFree(p)
			return nil, fmt.Errorf("zeroing %d bytes: %w", bytes, err)
		}
	}
	c.mu.Lock()
	c.cur += bytes
	c.peak = max(c.peak, c.cur)
	c.mu.Unlock()
	runtime.SetFinalizer(a, func(a *devAlloc) {
		c.mu.Lock()
		c.pending = append(c.pending, a)
		c.mu.Unlock()
	})
	return a, nil
}

func mib(b int64) float64 { return float64(b) / (1 << 20) }

// isOOM reports whether a driver error is CUDA_ERROR_OUT_OF_MEMORY.
func isOOM(err error) bool { return errors.Is(err, cu.OutOfMemory) }

// collect runs the garbage collector and frees what its finalizers queued,
// waiting a little for them (finalizers run on their own goroutine).
func (c *CUDA) collect() {
	runtime.GC()
	deadline := time.Now().Add(oomRetryWait)
	for {
		c.mu.Lock()
		n := len(c.pending)
		c.mu.Unlock()
		if n > 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	c.freePending()
}

// freeAlloc releases a on the context thread (once).
func (c *CUDA) freeAlloc(a *devAlloc) {
	if a == nil || a.freed {
		return
	}
	a.freed = true
	runtime.SetFinalizer(a, nil)
	if a.bytes > 0 {
		_ = cu.MemFree(a.ptr)
	}
	c.mu.Lock()
	c.cur -= a.bytes
	c.mu.Unlock()
}

// freePending releases allocations whose last buffer was collected.
func (c *CUDA) freePending() {
	c.mu.Lock()
	p := c.pending
	c.pending = nil
	c.mu.Unlock()
	for _, a := range p {
		if a.freed {
			continue
		}
		a.freed = true
		if a.bytes > 0 {
			_ = cu.MemFree(a.ptr)
		}
		c.mu.Lock()
		c.cur -= a.bytes
		c.mu.Unlock()
	}
}

// Free releases the device memory behind a buffer Alloc, UploadQ4 or
// UploadBF16 returned. Freeing a view of part of an allocation panics (it
// would free the rest too); freeing twice does nothing. Ops on a freed
// buffer panic.
func (c *CUDA) Free(b backend.Buf) {
	var allocs []*devAlloc
	switch x := b.(type) {
	case nil:
		return
	case *Buffer:
		d := c.buf(x)
		if d.off != 0 || 4*int64(d.n) != d.a.bytes {
			panic(fmt.Sprintf("kernels: %s: Free of a view [%d, %d) of a %d-byte allocation", c.Name(), d.off, d.off+d.n, d.a.bytes))
		}
		allocs = []*devAlloc{d.a}
	case *Q4:
		q := c.q4(x)
		allocs = []*devAlloc{q.packed, q.absmax, q.ncodes, q.nabsmax, q.nmap}
	case *BF16Weight:
		allocs = []*devAlloc{c.bf16(x).a}
	default:
		panic(fmt.Sprintf("kernels: %s: Free of a %T, which no CUDA backend made", c.Name(), b))
	}
	c.must("Free", c.do(func() error {
		for _, a := range allocs {
			c.freeAlloc(a)
		}
		return nil
	}))
}

// Alloc returns n zeroed float32s of device memory.
func (c *CUDA) Alloc(n int) backend.Buf {
	if n < 0 {
		panic(fmt.Sprintf("kernels: %s: Alloc of %d elements", c.Name(), n))
	}
	var a *devAlloc
	c.must("Alloc", c.do(func() (err error) { a, err = c.allocBytes(4 * int64(n)); return err }))
	return &Buffer{a: a, n: n, owner: c}
}

// buf unwraps b (nil stays nil) and checks it belongs to c.
func (c *CUDA) buf(b backend.Buf) *Buffer {
	if b == nil {
		return nil
	}
	d, ok := b.(*Buffer)
	if !ok || d == nil {
		panic(fmt.Sprintf("kernels: %s: buffer of type %T does not belong to a CUDA backend", c.Name(), b))
	}
	if d.owner != c {
		panic(fmt.Sprintf("kernels: %s: buffer belongs to %s", c.Name(), d.owner.Name()))
	}
	if d.a.freed {
		panic(fmt.Sprintf("kernels: %s: buffer was freed", c.Name()))
	}
	return d
}

// need checks that buffer name holds at least n elements.
func (c *CUDA) need(op, name string, b *Buffer, n int) {
	if b == nil {
		panic(fmt.Sprintf("kernels: %s: %s: buffer %s is nil", c.Name(), op, name))
	}
	if b.n < n {
		panic(fmt.Sprintf("kernels: %s: %s: buffer %s has %d elements, need %d", c.Name(), op, name, b.n, n))
	}
}

// View returns elements [off, off+n) of b.
func (c *CUDA) View(b backend.Buf, off, n int) backend.Buf {
	d := c.buf(b)
	if off < 0 || n < 0 || off+n > d.n {
		panic(fmt.Sprintf("kernels: %s: View [%d, %d) of a buffer of %d", c.Name(), off, off+n, d.n))
	}
	return &Buffer{a: d.a, off: d.off + off, n: n, owner: c}
}

// Upload copies src into dst.
func (c *CUDA) Upload(dst backend.Buf, src []float32) {
	d := c.buf(dst)
	if len(src) != d.n {
		panic(fmt.Sprintf("kernels: %s: Upload of %d values into a buffer of %d", c.Name(), len(src), d.n))
	}
	if d.n == 0 {
		return
	}
	c.must("Upload", c.do(func() error {
		return cu.MemcpyHtoD(d.Ptr(), unsafe.Pointer(&src[0]), 4*int64(d.n))
	}))
	runtime.KeepAlive(src)
}

// Download copies src into dst, waiting for queued kernels.
func (c *CUDA) Download(dst []float32, src backend.Buf) {
	s := c.buf(src)
	if len(dst) != s.n {
		panic(fmt.Sprintf("kernels: %s: Download of %d values into %d", c.Name(), s.n, len(dst)))
	}
	if s.n == 0 {
		return
	}
	c.must("Download", c.do(func() error {
		return cu.MemcpyDtoH(unsafe.Pointer(&dst[0]), s.Ptr(), 4*int64(s.n))
	}))
	runtime.KeepAlive(dst)
}

// Zero sets every element of b to 0.
func (c *CUDA) Zero(b backend.Buf) {
	d := c.buf(b)
	if d.n == 0 {
		return
	}
	c.must("Zero", c.do(func() error { return cu.MemsetD32(d.Ptr(), 0, int64(d.n)) }))
}

// Copy copies src into dst (same length).
func (c *CUDA) Copy(dst, src backend.Buf) {
	d, s := c.buf(dst), c.buf(src)
	if d.n != s.n {
		panic(fmt.Sprintf("kernels: %s: Copy of %d values into %d", c.Name(), s.n, d.n))
	}
	if d.n == 0 {
		return
	}
	c.must("Copy", c.do(func() error { return cu.MemcpyDtoD(d.Ptr(), s.Ptr(), 4*int64(d.n)) }))
}

// scratchBytes returns a device scratch area of at least bytes, by name,
// grown as needed. Only for use on the context thread; kernels run in
// order on one stream, so reuse between ops is safe.
func (c *CUDA) scratchBytes(name string, bytes int64) (cu.DevicePtr, error) {
	if s := c.scratch[name]; s != nil && s.bytes >= bytes {
		return s.ptr, nil
	}
	c.freeAlloc(c.scratch[name]) // queued kernels run before any later allocation reuses it
	a, err := c.allocBytes(max(bytes, 256))
	if err != nil {
		delete(c.scratch, name)
		return 0, fmt.Errorf("scratch %s: %w", name, err)
	}
	c.scratch[name] = a
	return a.ptr, nil
}

// uploadInts copies host int32s into scratch and returns the device address.
func (c *CUDA) uploadInts(name string, v []int32) (cu.DevicePtr, error) {
	p, err := c.scratchBytes(name, 4*int64(len(v)))
	if err != nil || len(v) == 0 {
		return p, err
	}
	err = cu.MemcpyHtoD(p, unsafe.Pointer(&v[0]), 4*int64(len(v)))
	runtime.KeepAlive(v)
	return p, err
}

// ---------------------------------------------------------------------------
// 4-bit weights.

// Q4 is the CUDA backend's backend.QBuf: packed codes and scales in device
// memory, in the layout quant.Tensor4 holds them (no dequantized copy).
type Q4 struct {
	n                                     int
	packed, absmax, ncodes, nabsmax, nmap *devAlloc
	offset                                float32
	nbs, bs, format                       int
	owner                                 *CUDA
}

// Len is the number of logical elements.
func (q *Q4) Len() int { return q.n }

// UploadQ4 copies t's codes and scales (fp32, or the double-quantized
// codes, nested absmax, map and offset) into device memory. A tensor that
// fails quant's Validate panics with its error.
func (c *CUDA) UploadQ4(t *quant.Tensor4) backend.QBuf {
	if err := t.Validate(); err != nil {
		panic(fmt.Errorf("kernels: %s: UploadQ4: %w", c.Name(), err))
	}
	q := &Q4{n: t.Len(), bs: t.BlockSize, format: int(t.Format), owner: c}
	c.must("UploadQ4", c.do(func() error {
		var err error
		// Pad the codes to a multiple of 16 bytes: the dequantizer reads 16 at a time.
		if q.packed, err = c.uploadBytes(t.Packed, (len(t.Packed)+15)/16*16); err != nil {
			return fmt.Errorf("packed codes: %w", err)
		}
		if nd := t.Nested; nd != nil {
			q.offset, q.nbs = nd.Offset, nd.BlockSize
			if q.ncodes, err = c.uploadBytes(nd.Codes, len(nd.Codes)); err != nil {
				return fmt.Errorf("nested codes: %w", err)
			}
			if q.nabsmax, err = c.uploadFloats(nd.Absmax); err != nil {
				return fmt.Errorf("nested absmax: %w", err)
			}
			if q.nmap, err = c.uploadFloats(nd.Map[:]); err != nil {
				return fmt.Errorf("nested map: %w", err)
			}
			return nil
		}
		q.nbs = 1
		if q.absmax, err = c.uploadFloats(t.Absmax); err != nil {
			return fmt.Errorf("absmax: %w", err)
		}
		return nil
	}))
	return q
}

func (c *CUDA) uploadBytes(b []byte, size int) (*devAlloc, error) {
	a, err := c.allocBytes(int64(size))
	if err != nil || len(b) == 0 {
		return a, err
	}
	err = cu.MemcpyHtoD(a.ptr, unsafe.Pointer(&b[0]), int64(len(b)))
	runtime.KeepAlive(b)
	return a, err
}

func (c *CUDA) uploadFloats(v []float32) (*devAlloc, error) {
	a, err := c.allocBytes(4 * int64(len(v)))
	if err != nil || len(v) == 0 {
		return a, err
	}
	err = cu.MemcpyHtoD(a.ptr, unsafe.Pointer(&v[0]), 4*int64(len(v)))
	runtime.KeepAlive(v)
	return a, err
}

func (c *CUDA) q4(w backend.QBuf) *Q4 {
	q, ok := w.(*Q4)
	if !ok || q == nil {
		panic(fmt.Sprintf("kernels: %s: 4-bit weight of type %T does not belong to a CUDA backend", c.Name(), w))
	}
	if q.owner != c {
		panic(fmt.Sprintf("kernels: %s: 4-bit weight belongs to %s", c.Name(), q.owner.Name()))
	}
	if q.packed.freed {
		panic(fmt.Sprintf("kernels: %s: 4-bit weight was freed", c.Name()))
	}
	return q
}

// ---------------------------------------------------------------------------
// bfloat16 weights.

// BF16Weight is the CUDA backend's backend.HBuf: a frozen matrix's bfloat16 bits
// in device memory, widened to fp32 a tile at a time by the ops.
type BF16Weight struct {
	a     *devAlloc
	n     int
	owner *CUDA
}

// Len is the number of elements.
func (h *BF16Weight) Len() int { return h.n }

func (h *BF16Weight) ptr() cu.DevicePtr { return h.a.ptr }

// UploadBF16 copies src (bfloat16 bits) into device memory.
func (c *CUDA) UploadBF16(src []uint16) backend.HBuf {
	h := &BF16Weight{n: len(src), owner: c}
	c.must("UploadBF16", c.do(func() error {
		var err error
		h.a, err = c.allocBytes(int64((2*len(src) + 3) / 4 * 4))
		if err != nil || len(src) == 0 {
			return err
		}
		err = cu.MemcpyHtoD(h.a.ptr, unsafe.Pointer(&src[0]), 2*int64(len(src)))
		runtime.KeepAlive(src)
		return err
	}))
	return h
}

func (c *CUDA) bf16(w backend.HBuf) *BF16Weight {
	h, ok := w.(*BF16Weight)
	if !ok || h == nil {
		panic(fmt.Sprintf("kernels: %s: bf16 weight of type %T does not belong to a CUDA backend", c.Name(), w))
	}
	if h.owner != c {
		panic(fmt.Sprintf("kernels: %s: bf16 weight belongs to %s", c.Name(), h.owner.Name()))
	}
	if h.a.freed {
		panic(fmt.Sprintf("kernels: %s: bf16 weight was freed", c.Name()))
	}
	return h
}

// args are the nine Q4_PARAMS of nf4.cu.
func (q *Q4) args() []any {
	ptr := func(a *devAlloc) cu.DevicePtr {
		if a == nil {
			return 0
		}
		return a.ptr
	}
	return []any{ptr(q.packed), ptr(q.absmax), ptr(q.ncodes), ptr(q.nabsmax), ptr(q.nmap), q.offset, q.nbs, q.bs, q.format}
}

// ---------------------------------------------------------------------------
// Launching.

// dim3 is a grid or block shape.
type dim3 struct{ x, y, z int }

// slot packs one kernel argument into the 8-byte cell gorgonia.org/cu's
// Launch copies per parameter (little endian: a 4-byte int or float sits in
// the low half, which is what the kernel reads).
func slot(v any) uint64 {
	switch x := v.(type) {
	case *Buffer:
		if x == nil {
			return 0
		}
		return uint64(x.Ptr())
	case cu.DevicePtr:
		return uint64(x)
	case int:
		if x < math.MinInt32 || x > math.MaxInt32 {
			panic(fmt.Sprintf("kernels: int argument %d does not fit a C int", x))
		}
		return uint64(uint32(int32(x)))
	case int64:
		return uint64(x)
	case uint64:
		return x
	case float32:
		return uint64(math.Float32bits(x))
	case float64:
		return math.Float64bits(x)
	case bool:
		if x {
			return 1
		}
		return 0
	}
	panic(fmt.Sprintf("kernels: kernel argument of type %T", v))
}

// launchOn queues kernel name; call it on the context thread.
func (c *CUDA) launchOn(name string, grid, block dim3, args ...any) error {
	fn, ok := c.fns[name]
	if !ok {
		return fmt.Errorf("kernel %s is not loaded", name)
	}
	slots := make([]uint64, len(args))
	ptrs := make([]unsafe.Pointer, len(args))
	for i, a := range args {
		slots[i] = slot(a)
		ptrs[i] = unsafe.Pointer(&slots[i])
	}
	gy, gz := max(grid.y, 1), max(grid.z, 1)
	if grid.x <= 0 { // nothing to do
		return nil
	}
	if err := fn.Launch(grid.x, gy, gz, block.x, max(block.y, 1), max(block.z, 1), 0, cu.Stream{}, ptrs); err != nil {
		return fmt.Errorf("launching %s (grid %dx%dx%d, block %d): %w", name, grid.x, gy, gz, block.x, err)
	}
	return nil
}

// launch queues one kernel from any goroutine and panics on failure.
func (c *CUDA) launch(op, name string, grid, block dim3, args ...any) {
	c.must(op, c.do(func() error { return c.launchOn(name, grid, block, args...) }))
}

// elems is the grid of a grid-stride loop over n elements, 256 threads a block.
func elems(n int) dim3 {
	return dim3{min((n+255)/256, 1<<16), 1, 1}
}

var (
	threads256 = dim3{256, 1, 1}
	threads128 = dim3{128, 1, 1}
)
