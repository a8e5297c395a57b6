// Test service for Meltemi's Thrift codec: every method shape a proxy has to handle.
namespace py echo

exception EchoError {
  1: string why,
  2: i32 code,
}

// Nested containers of every kind, so an unframed (buffered) stream can only be cut by
// skipping the whole value.
struct Inner {
  1: list<map<string, i32>> rows,
  2: set<i64> ids,
  3: bool flag,
}

struct Item {
  1: string name,
  2: list<i32> values,
  3: map<string, list<string>> tags,
  4: list<Inner> inner,
  5: double score,
  6: binary raw,
  7: optional i16 small,
  8: i8 tiny,
}

service Echo {
  string echo(1: string msg),
  i64 add(1: i64 a, 2: i64 b),
  binary blob(1: binary data),
  string fail(1: string why) throws (1: EchoError err),
  oneway void notify(1: string msg),
  Item mirror(1: Item item),
  void ping(),
  // For tests through a proxy: what this server saw. Keys: `tag`, `notified` (one-way messages
  // received so far, joined by '|'), and `h:<key>` for each THeader info header of this call.
  map<string, string> inspect(),
}
