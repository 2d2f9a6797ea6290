module example.internal/go_client

go 1.19
