package main

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
)

// logRequests logs each request a stand-in answers: method, path (no
// query), the client id it came with, status and outcome (an OAuth error
// code, or what was served), so that a user can watch the broker call it
// or not. Never a secret: no header, form value or body but the client id
// and the error code, and the stand-in's own secrets (one typed into the
// wrong field, say) are blanked out of those.
func logRequests(h http.Handler, log *slog.Logger, secrets ...string) http.Handler {
	var pairs []string
	for _, s := range secrets {
		if s != "" {
			pairs = append(pairs, s, "[a secret]")
		}
	}
	blank := strings.NewReplacer(pairs...)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := &recorder{ResponseWriter: w, status: http.StatusOK}
		h.ServeHTTP(rec, r)
		attrs := []any{"method", r.Method, "path", blank.Replace(r.URL.Path), "status", rec.status, "outcome", rec.outcome()}
		if id := clientID(r); id != "" {
			attrs = append(attrs, "client_id", blank.Replace(id))
		}
		log.Info("answered", attrs...)
	})
}

// clientID is the client id a token request authenticated with (Basic or
// in the form, which the handler has parsed), if any.
func clientID(r *http.Request) string {
	if id, _, ok := r.BasicAuth(); ok {
		if unescaped, err := url.QueryUnescape(id); err == nil {
			return unescaped
		}
		return id
	}
	return r.PostForm.Get("client_id")
}

// recorder keeps a response's status and the start of its body.
type recorder struct {
	http.ResponseWriter
	status int
	head   bytes.Buffer
}

func (r *recorder) WriteHeader(code int) {
	r.status = code
	r.ResponseWriter.WriteHeader(code)
}

func (r *recorder) Write(b []byte) (int, error) {
	if room := 512 - r.head.Len(); room > 0 {
		r.head.Write(b[:min(room, len(b))])
	}
	return r.ResponseWriter.Write(b)
}

// outcome is the OAuth error code of an error answer, or what a success
// served.
func (r *recorder) outcome() string {
	var answer struct {
		Error       string `json:"error"`
		AccessToken string `json:"access_token"`
	}
	_ = json.Unmarshal(r.head.Bytes(), &answer)
	switch {
	case answer.Error != "":
		return answer.Error
	case answer.AccessToken != "":
		return "token issued"
	case r.status < 400:
		return "ok"
	}
	return http.StatusText(r.status)
}
