// Call the orders service with the token tokend keeps (Java 11+).
//
//   TOKEN_FILE=/run/tokend/orders ORDERS_URL=https://orders.example.internal/orders \
//       java Client.java
//
// Prints the answer; exits 1 if the call fails.
import java.io.IOException;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;

public final class Client {
    private static final Path TOKEN_FILE =
            Path.of(System.getenv().getOrDefault("TOKEN_FILE", "/run/tokend/orders"));
    private static final URI ORDERS_URL = URI.create(
            System.getenv().getOrDefault("ORDERS_URL", "https://orders.example.internal/orders"));
    private static final HttpClient HTTP =
            HttpClient.newBuilder().connectTimeout(Duration.ofSeconds(10)).build();

    private Client() {}

    /** Returns the current token: read the file on every call, never keep it. */
    static String readToken() throws IOException {
        return Files.readString(TOKEN_FILE, StandardCharsets.US_ASCII).strip();
    }

    static HttpResponse<String> getOrders() throws IOException, InterruptedException {
        HttpRequest request = HttpRequest.newBuilder(ORDERS_URL)
                .header("Authorization", "Bearer " + readToken())
                .timeout(Duration.ofSeconds(10))
                .build();
        return HTTP.send(request, HttpResponse.BodyHandlers.ofString());
    }

    public static void main(String[] args) throws IOException, InterruptedException {
        HttpResponse<String> response = getOrders();
        if (response.statusCode() / 100 != 2) {
            System.err.println(response.statusCode() + " " + response.body());
            System.exit(1);
        }
        System.out.println(response.body());
    }
}
