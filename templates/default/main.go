// hello prints a greeting and the platform it was built for. Built with
// CGO_ENABLED=0, it is one static binary with no libc, so each image holds
// just this program.
package main

import (
	"fmt"
	"os"
	"runtime"
)

func main() {
	greeting := os.Getenv("GREETING")
	if greeting == "" {
		greeting = "Hello from nixoci"
	}
	fmt.Println(greeting)
	fmt.Printf("built for %s/%s\n", runtime.GOOS, runtime.GOARCH)
}
