// workload is the end-to-end suite's stand-in for an agent: a static HTTP server on $PORT
// (default 8080) whose /healthz and /readyz answer 200, and /version the value of $VERSION.
// MODE=crash exits with status 1 a second after starting (a crashing container); MODE=unready
// answers 503 on /readyz (a pod that never becomes Ready). `workload exit N` exits with status
// N at once (a hook Job that passes or fails); `workload --suite NAME` stands in for a test
// runner (the examples' integration tests) and passes.
package main

import (
	"fmt"
	"net/http"
	"os"
	"strconv"
	"time"
)

func main() {
	if len(os.Args) == 3 && os.Args[1] == "--suite" {
		fmt.Printf("workload: suite %s passed\n", os.Args[2])
		return
	}
	if len(os.Args) == 3 && os.Args[1] == "exit" {
		code, err := strconv.Atoi(os.Args[2])
		if err != nil {
			code = 2
		}
		fmt.Printf("workload: exiting with %d\n", code)
		os.Exit(code)
	}
	mode := os.Getenv("MODE")
	if mode == "crash" {
		time.Sleep(time.Second)
		fmt.Fprintln(os.Stderr, "workload: crashing on purpose (MODE=crash)")
		os.Exit(1)
	}
	port := os.Getenv("PORT")
	if port == "" {
		port = "8080"
	}
	ok := func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") }
	http.HandleFunc("/healthz", ok)
	http.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		if mode == "unready" {
			http.Error(w, "not ready (MODE=unready)", http.StatusServiceUnavailable)
			return
		}
		ok(w, r)
	})
	http.HandleFunc("/version", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, os.Getenv("VERSION"))
	})
	server := &http.Server{Addr: ":" + port, ReadHeaderTimeout: 5 * time.Second}
	if err := server.ListenAndServe(); err != nil {
		fmt.Fprintln(os.Stderr, "workload:", err)
		os.Exit(1)
	}
}
