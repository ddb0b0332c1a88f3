package coordinator

import (
	"errors"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/opencluster/opencluster/secagg"
)

// Secure-aggregation endpoints (docs/protocol.md):
//
//	POST /v1/secagg/{stage}   a signed stage message (package secagg's format), stage 1..5
//	GET  /v1/secagg/{stage}?round=R&attempt=A&wait=30s
//	                          that stage's input for the polling worker
//	                          (signed poll headers, as GET /v1/round): 200
//	                          with the bytes, 204 when the stage has not
//	                          started by the end of the wait, 410 when the
//	                          attempt or stage is over.

func (s *Server) secaggPost(w http.ResponseWriter, r *http.Request) {
	if s.rateLimited(w, "ip:"+remoteIP(r)) {
		return
	}
	limit := s.c.cfg.MaxUpdateBytes
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			writeError(w, reject(http.StatusRequestEntityTooLarge, "too_large", "secure-aggregation message exceeds max_update_bytes %d", limit))
			return
		}
		writeError(w, reject(http.StatusBadRequest, "malformed", "reading the message: %v", err))
		return
	}
	if st, err := strconv.Atoi(r.PathValue("stage")); err != nil || st < 1 || st > secagg.NumStages || !secagg.IsStage(body, st) {
		writeError(w, reject(http.StatusBadRequest, "malformed", "POST /v1/secagg/%s: the path's stage must be 1..%d and match the message's", r.PathValue("stage"), secagg.NumStages))
		return
	}
	if err := s.c.SecAggSubmit(r.Context(), body); err != nil {
		var re *RejectError
		if errors.As(err, &re) {
			s.c.M.rejected(re.Code)
		}
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]bool{"accepted": true})
}

func (s *Server) secaggGet(w http.ResponseWriter, r *http.Request) {
	id, err := s.authWorker(r)
	if err != nil {
		writeError(w, err)
		return
	}
	q := r.URL.Query()
	stage, err1 := strconv.Atoi(r.PathValue("stage"))
	round, err2 := strconv.ParseUint(q.Get("round"), 10, 64)
	attempt, err3 := strconv.ParseUint(q.Get("attempt"), 10, 32)
	wait, err4 := time.ParseDuration(q.Get("wait"))
	if q.Get("wait") == "" {
		wait, err4 = 0, nil
	}
	if err := errors.Join(err1, err2, err3, err4); err != nil || wait < 0 {
		writeError(w, reject(http.StatusBadRequest, "malformed", "GET /v1/secagg/{stage}?round=R&attempt=A&wait=D: %v", err))
		return
	}
	timer := time.NewTimer(min(wait, MaxWait))
	defer timer.Stop()
	for {
		b, ok, changed, err := s.c.SecAggInput(id, round, uint32(attempt), stage)
		if err != nil {
			writeError(w, err)
			return
		}
		if ok {
			w.Header().Set("Content-Type", "application/octet-stream")
			w.WriteHeader(http.StatusOK)
			w.Write(b)
			return
		}
		select {
		case <-changed:
			continue
		case <-timer.C:
		case <-r.Context().Done():
		}
		w.Header().Set("Retry-After", "1")
		w.WriteHeader(http.StatusNoContent)
		return
	}
}
