// Command app is the example service that berth builds and deploys: a static
// binary in a FROM scratch image that answers on :5000.
//
//	GET /        "app VERSION" (VERSION from the APP_VERSION environment variable)
//	GET /health  "ok", or 503 when APP_HEALTHY=false (to try a failed deploy)
//	GET /slow    "app VERSION" after ?ms= milliseconds (a request in flight
//	             while a deploy switches)
//	GET /client  the X-Forwarded-For and X-Forwarded-Proto the app was sent
//
// `app migrate` stands for a release command (database migrations): it
// prints what it did and exits, with 1 when APP_MIGRATE=fail.
package main

import (
	"fmt"
	"log"
	"net/http"
	"os"
	"strconv"
	"time"
)

func main() {
	version := envOr("APP_VERSION", "dev")
	if len(os.Args) > 1 && os.Args[1] == "migrate" {
		if os.Getenv("APP_MIGRATE") == "fail" {
			fmt.Println("migration 0002_add_orders failed: column orders.total exists")
			os.Exit(1)
		}
		fmt.Printf("migrations of app %s applied\n", version)
		return
	}
	addr := envOr("APP_ADDR", ":5000")
	healthy := os.Getenv("APP_HEALTHY") != "false"

	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "app %s\n", version)
	})
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		ms, _ := strconv.Atoi(r.URL.Query().Get("ms"))
		time.Sleep(time.Duration(ms) * time.Millisecond)
		fmt.Fprintf(w, "app %s\n", version)
	})
	mux.HandleFunc("/client", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "for=%s proto=%s\n", r.Header.Get("X-Forwarded-For"), r.Header.Get("X-Forwarded-Proto"))
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
