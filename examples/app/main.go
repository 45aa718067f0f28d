// Command app is the example service that berth builds and deploys: a static
// binary in a FROM scratch image that answers on :5000.
//
//	GET /        "app VERSION" (VERSION from the APP_VERSION environment variable)
//	GET /health  "ok", or 503 when APP_HEALTHY=false (to try a failed deploy)
package main

import (
	"fmt"
	"log"
	"net/http"
	"os"
)

func main() {
	version := envOr("APP_VERSION", "dev")
	addr := envOr("APP_ADDR", ":5000")
	healthy := os.Getenv("APP_HEALTHY") != "false"

	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "app %s\n", version)
	})
	mux.HandleFunc("/health", func(w http.ResponseWriter, r *http.Request) {
		if !healthy {
			http.Error(w, "unhealthy", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	log.Printf("app %s listening on %s", version, addr)
	log.Fatal(http.ListenAndServe(addr, mux))
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}
