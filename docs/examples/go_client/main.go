// Command go_client calls the orders service with the token tokend keeps.
//
//	TOKEN_FILE=/run/tokend/orders ORDERS_URL=https://orders.example.internal/orders \
//	    go run .
//
// It prints the answer and exits 1 if the call fails.
package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"
)

var client = &http.Client{Timeout: 10 * time.Second}

func getenv(key, fallback string) string {
	if value, ok := os.LookupEnv(key); ok {
		return value
	}
	return fallback
}

// readToken returns the current token. Read the file on every call, never keep
// the token: tokend replaces the file well before the token expires.
func readToken(path string) (string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(data)), nil
}

func getOrders(tokenFile, url string) (int, string, error) {
	token, err := readToken(tokenFile)
	if err != nil {
		return 0, "", err
	}
	request, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return 0, "", err
	}
	request.Header.Set("Authorization", "Bearer "+token)
	response, err := client.Do(request)
	if err != nil {
		return 0, "", err
	}
	defer response.Body.Close()
	body, err := io.ReadAll(response.Body)
	return response.StatusCode, string(body), err
}

func main() {
	tokenFile := getenv("TOKEN_FILE", "/run/tokend/orders")
	url := getenv("ORDERS_URL", "https://orders.example.internal/orders")
	status, body, err := getOrders(tokenFile, url)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if status/100 != 2 {
		fmt.Fprintln(os.Stderr, status, body)
		os.Exit(1)
	}
	fmt.Println(body)
}
