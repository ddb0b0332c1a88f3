// Package faults holds the end-to-end fault tests of the federated
// protocol: a real `opencluster coordinator` process and several
// `opencluster worker` processes on loopback, over HTTP/2 with TLS, with a
// worker killed (SIGKILL) in the middle of an upload and the coordinator
// killed in the middle of a round. After each fault the round must
// complete, no accepted update may be lost, and `opencluster ledger verify
// --coordinator-dir` must pass, aggregates recomputed. The tests build the
// binary once and are skipped under -short.
package faults
