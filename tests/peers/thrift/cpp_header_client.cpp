// Captures what the C++ THeader client (libthriftz, Debian libthrift-dev 0.17) writes: one
// `echo("hello")` call with THeaderProtocol (compact, the C++ default), then `close()`.
// Not built by CI (it needs libthrift-dev and libboost-dev); its capture is committed as
// codecs/thrift/tests/vectors/cpp_header_compact_close.bin. To capture again:
//
//   g++ -std=c++17 cpp_header_client.cpp -o cpp_header_client -lthriftz -lthrift
//   python3 -c 'import socket; l = socket.create_server(("127.0.0.1", 23471)); c = l.accept()[0]
//   b = b""
//   while (d := c.recv(65536)): b += d
//   open("capture.bin", "wb").write(b)' & ./cpp_header_client 23471
//
// What it shows: `THeaderTransport::close()` flushes, and a flush with nothing buffered still
// writes a THeader frame with a header and no message (18 bytes), which the Thrift codec must
// take for a keep-alive, not for a corrupt stream.
#include <thrift/protocol/THeaderProtocol.h>
#include <thrift/transport/TSocket.h>

#include <memory>
#include <string>

using apache::thrift::protocol::THeaderProtocol;
using apache::thrift::protocol::T_CALL;
using apache::thrift::protocol::T_STRING;
using apache::thrift::transport::TSocket;

int main(int argc, char** argv) {
  if (argc != 2) {
    return 2;
  }
  auto socket = std::make_shared<TSocket>("127.0.0.1", std::stoi(argv[1]));
  // The protocol wraps the socket in its own THeaderTransport.
  auto proto = std::make_shared<THeaderProtocol>(socket);
  auto transport = proto->getTransport();
  transport->open();
  proto->writeMessageBegin("echo", T_CALL, 1);
  proto->writeStructBegin("echo_args");
  proto->writeFieldBegin("msg", T_STRING, 1);
  proto->writeString(std::string("hello"));
  proto->writeFieldEnd();
  proto->writeFieldStop();
  proto->writeStructEnd();
  proto->writeMessageEnd();
  transport->flush();
  // No answer is read: the capture server never replies. close() flushes once more.
  transport->close();
  return 0;
}
