// Call the orders service with the token tokend keeps (.NET 8).
//
//   TOKEN_FILE=/run/tokend/orders ORDERS_URL=https://orders.example.internal/orders \
//       dotnet run
//
// Prints the answer; exits 1 if the call fails.
using System.Net.Http.Headers;

var tokenFile = Environment.GetEnvironmentVariable("TOKEN_FILE") ?? "/run/tokend/orders";
var ordersUrl = Environment.GetEnvironmentVariable("ORDERS_URL")
    ?? "https://orders.example.internal/orders";
using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(10) };

// Read the file on every call, never keep the token: tokend replaces the file
// well before the token expires.
async Task<string> ReadToken() => (await File.ReadAllTextAsync(tokenFile)).Trim();

async Task<HttpResponseMessage> GetOrders()
{
    var request = new HttpRequestMessage(HttpMethod.Get, ordersUrl);
    request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", await ReadToken());
    return await http.SendAsync(request);
}

using var response = await GetOrders();
var body = await response.Content.ReadAsStringAsync();
if (!response.IsSuccessStatusCode)
{
    Console.Error.WriteLine($"{(int)response.StatusCode} {body}");
    return 1;
}
Console.WriteLine(body);
return 0;
