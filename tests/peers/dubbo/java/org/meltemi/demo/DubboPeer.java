package org.meltemi.demo;

import com.caucho.hessian.io.Hessian2Input;
import com.caucho.hessian.io.Hessian2Output;
import com.caucho.hessian.io.SerializerFactory;

import java.io.ByteArrayInputStream;
import java.io.ByteArrayOutputStream;
import java.io.DataInputStream;
import java.io.EOFException;
import java.io.IOException;
import java.io.OutputStream;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.net.ServerSocket;
import java.net.Socket;
import java.nio.ByteBuffer;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.atomic.AtomicLong;

/**
 * A Dubbo2 provider and consumer written on Caucho Hessian2 (Debian libhessian-java), speaking
 * the exchange framing of Apache Dubbo's {@code ExchangeCodec}/{@code DubboCodec}:
 * 16-byte header (magic 0xdabb, flags, status, request id, body length), request body
 * (dubbo version, path, version, method, descriptor, arguments, attachments) and response body
 * (result flag, value or exception, attachments for dubbo 2.0.2 peers).
 *
 * <pre>
 * provider --port N --tag v1|v2        serve org.meltemi.demo.EchoService on 127.0.0.1:N
 * consumer --port N [--dubbo 2.0.2]    call every method once, print one line per call
 * consumer --port N --call SPEC ...    run the given calls over one connection (see {@link #script})
 * </pre>
 *
 * The provider logs every request ({@code provider v1 <- path#method id=N [args] {attachments}})
 * and every heartbeat ({@code provider v1 <- heartbeat id=N}) so tests can tell which provider
 * served a call and that a heartbeat answered by a proxy never arrived. Besides the
 * {@link EchoService} methods it answers {@code attachment(key)} with
 * {@code <tag>:<key>=<value of that attachment>}, to show attachments a proxy added.
 */
public final class DubboPeer {
    static final String SERVICE = "org.meltemi.demo.EchoService";
    static final int HEADER = 16;
    static final byte FLAG_REQUEST = (byte) 0x80, FLAG_TWOWAY = 0x40, FLAG_EVENT = 0x20, HESSIAN2 = 2;
    static final byte OK = 20, SERVICE_ERROR = 70;

    public static void main(String[] args) throws Exception {
        Map<String, String> opts = new HashMap<>();
        List<String> calls = new ArrayList<>();
        for (int i = 1; i + 1 < args.length; i += 2) {
            if (args[i].equals("--call")) calls.add(args[i + 1]); else opts.put(args[i], args[i + 1]);
        }
        int port = Integer.parseInt(opts.getOrDefault("--port", "20880"));
        if (args.length > 0 && args[0].equals("provider")) {
            provider(port, opts.getOrDefault("--tag", "v1"));
        } else if (args.length > 0 && args[0].equals("consumer") && !calls.isEmpty()) {
            System.exit(script(port, opts.getOrDefault("--dubbo", "2.0.2"), calls));
        } else if (args.length > 0 && args[0].equals("consumer")) {
            System.exit(consumer(port, opts.getOrDefault("--dubbo", "2.0.2")));
        } else {
            System.err.println("usage: DubboPeer provider --port N --tag v1 | consumer --port N [--dubbo V]");
            System.exit(2);
        }
    }

    // ---------------------------------------------------------------- framing

    static final class Frame {
        byte flags, status;
        long id;
        byte[] body;
        boolean isRequest() { return (flags & FLAG_REQUEST) != 0; }
        boolean isTwoWay() { return (flags & FLAG_TWOWAY) != 0; }
        boolean isEvent() { return (flags & FLAG_EVENT) != 0; }
    }

    static Frame read(DataInputStream in) throws IOException {
        byte[] h = new byte[HEADER];
        in.readFully(h);
        if ((h[0] & 0xff) != 0xda || (h[1] & 0xff) != 0xbb) throw new IOException("bad magic");
        ByteBuffer b = ByteBuffer.wrap(h);
        Frame f = new Frame();
        f.flags = h[2];
        f.status = h[3];
        f.id = b.getLong(4);
        int len = b.getInt(12);
        if (len < 0 || len > 8 << 20) throw new IOException("bad body length " + len);
        f.body = new byte[len];
        in.readFully(f.body);
        return f;
    }

    static synchronized void write(OutputStream out, byte flags, byte status, long id, byte[] body) throws IOException {
        ByteBuffer b = ByteBuffer.allocate(HEADER + body.length);
        b.put((byte) 0xda).put((byte) 0xbb).put(flags).put(status).putLong(id).putInt(body.length).put(body);
        out.write(b.array());
        out.flush();
    }

    interface Body { void write(Hessian2Output out) throws IOException; }

    static byte[] hessian(Body body) throws IOException {
        ByteArrayOutputStream bytes = new ByteArrayOutputStream();
        Hessian2Output out = new Hessian2Output(bytes);
        out.setSerializerFactory(FACTORY);
        body.write(out);
        out.flush();
        return bytes.toByteArray();
    }

    static final SerializerFactory FACTORY = new SerializerFactory();

    static Hessian2Input input(byte[] body) {
        Hessian2Input in = new Hessian2Input(new ByteArrayInputStream(body));
        in.setSerializerFactory(FACTORY);
        return in;
    }

    /** Number of parameters in a JVM descriptor such as {@code Ljava/lang/String;[IJ}. */
    static int countParameters(String desc) {
        int n = 0;
        for (int i = 0; i < desc.length(); n++) {
            while (desc.charAt(i) == '[') i++;
            if (desc.charAt(i) == 'L') i = desc.indexOf(';', i) + 1; else i++;
        }
        return n;
    }

    /** Dubbo's Version.isSupportResponseAttachment: 2.0.2 up to 2.0.99. */
    static boolean supportsResponseAttachments(String version) {
        if (version == null) return false;
        String[] p = version.split("\\.");
        try {
            return p.length >= 3 && p[0].equals("2") && p[1].equals("0") && Integer.parseInt(p[2].replaceAll("\\D.*", "")) >= 2;
        } catch (NumberFormatException e) {
            return false;
        }
    }

    // ---------------------------------------------------------------- provider

    static void provider(int port, String tag) throws IOException {
        ServerSocket server = new ServerSocket();
        server.setReuseAddress(true);
        server.bind(new InetSocketAddress(InetAddress.getByName("127.0.0.1"), port));
        System.out.println("java provider " + tag + " listening on 127.0.0.1:" + port);
        System.out.flush();
        while (true) {
            Socket s = server.accept();
            Thread t = new Thread(() -> serve(s, tag));
            t.setDaemon(true);
            t.start();
        }
    }

    static void serve(Socket s, String tag) {
        try (s) {
            DataInputStream in = new DataInputStream(s.getInputStream());
            OutputStream out = s.getOutputStream();
            while (true) {
                Frame f;
                try {
                    f = read(in);
                } catch (EOFException e) {
                    return;
                }
                if (!f.isRequest()) continue;
                if (f.isEvent()) {
                    System.out.println("provider " + tag + " <- heartbeat id=" + f.id);
                    System.out.flush();
                    // Heartbeat: answer two-way ones with an event response holding null.
                    if (f.isTwoWay()) write(out, (byte) (FLAG_EVENT | HESSIAN2), OK, f.id, hessian(o -> o.writeNull()));
                    continue;
                }
                handle(f, out, tag);
            }
        } catch (IOException e) {
            System.err.println("provider connection: " + e);
        }
    }

    @SuppressWarnings("unchecked")
    static void handle(Frame f, OutputStream out, String tag) throws IOException {
        Hessian2Input in = input(f.body);
        String dubbo = in.readString();
        String path = in.readString();
        String version = (String) in.readObject();
        String method = in.readString();
        String desc = in.readString();
        Object[] args = new Object[countParameters(desc)];
        for (int i = 0; i < args.length; i++) args[i] = in.readObject();
        Map<String, Object> attachments = (Map<String, Object>) in.readObject();
        System.out.println("provider " + tag + " <- " + path + "#" + method + " id=" + f.id + " " + Arrays.toString(args) + " " + attachments);
        System.out.flush();

        Object value = null;
        Throwable error = null;
        String failure = null;
        switch (method) {
            case "echo": value = tag + ":" + args[0]; break;
            case "greet": {
                User u = (User) args[0];
                List<String> tags = new ArrayList<>(u.tags == null ? List.of() : u.tags);
                tags.add(tag);
                value = new User(u.name + "@" + tag, u.age + 1, u.id, tags);
                break;
            }
            case "fail": {
                DemoException e = new DemoException("declared failure from " + tag + ": " + args[0]);
                // A short, stable stack trace keeps the captured vector small.
                e.setStackTrace(new StackTraceElement[] {
                    new StackTraceElement("org.meltemi.demo.EchoServiceImpl", "fail", "EchoServiceImpl.java", 42) });
                error = e;
                break;
            }
            case "notify": value = null; break;
            case "attachment": {
                Object a = attachments == null ? null : attachments.get(String.valueOf(args[0]));
                value = tag + ":" + args[0] + "=" + (a == null ? "<none>" : a);
                break;
            }
            default: failure = "Not found method " + method + " in service " + path + " (provider " + tag + ")";
        }
        if (!f.isTwoWay()) return;
        if (failure != null) {
            final String msg = failure;
            write(out, HESSIAN2, SERVICE_ERROR, f.id, hessian(o -> o.writeString(msg)));
            return;
        }
        boolean withAttachments = supportsResponseAttachments(dubbo);
        Map<String, Object> resAtt = new LinkedHashMap<>();
        resAtt.put("served-by", tag);
        if (attachments != null) {
            for (Map.Entry<String, Object> e : attachments.entrySet()) {
                if (e.getKey().startsWith("x-")) resAtt.put(e.getKey(), e.getValue());
            }
        }
        final Object v = value;
        final Throwable t = error;
        byte[] body = hessian(o -> {
            int flag = t != null ? 0 : v == null ? 2 : 1;
            o.writeInt(withAttachments ? flag + 3 : flag);
            if (t != null) o.writeObject(t); else if (v != null) o.writeObject(v);
            if (withAttachments) o.writeObject(new HashMap<>(resAtt));
        });
        write(out, HESSIAN2, OK, f.id, body);
    }

    // ---------------------------------------------------------------- consumer

    static final AtomicLong IDS = new AtomicLong(1);

    static byte[] invocation(String dubbo, String method, String desc, Object[] args, Map<String, Object> att) throws IOException {
        return invocation(dubbo, SERVICE, method, desc, args, att);
    }

    static byte[] invocation(String dubbo, String service, String method, String desc, Object[] args, Map<String, Object> att) throws IOException {
        return hessian(o -> {
            o.writeString(dubbo);
            o.writeString(service);
            o.writeString("1.0.0");
            o.writeString(method);
            o.writeString(desc);
            for (Object a : args) o.writeObject(a);
            o.writeObject(att);
        });
    }

    static Map<String, Object> attachments(String dubbo) {
        return attachments(dubbo, SERVICE);
    }

    static Map<String, Object> attachments(String dubbo, String service) {
        Map<String, Object> a = new HashMap<>();
        a.put("path", service);
        a.put("interface", service);
        a.put("version", "1.0.0");
        a.put("group", "demo");
        a.put("timeout", "3000");
        a.put("dubbo", dubbo);
        a.put("x-caller", "java-consumer");
        return a;
    }

    static String describe(Frame f) throws IOException {
        if (f.isEvent()) return "heartbeat-reply status=" + f.status;
        Hessian2Input in = input(f.body);
        if (f.status != OK) return "error status=" + f.status + " message=" + in.readString();
        // dubbo-remoting writes a bare null, without result flag, for a null result.
        if (f.body.length == 1 && f.body[0] == 'N') return "value null (bare, no result flag)";
        int flag = in.readInt();
        Object v = (flag == 2 || flag == 5) ? null : in.readObject();
        Object att = flag >= 3 ? in.readObject() : null;
        String what = (flag == 0 || flag == 3) ? "exception " + v : "value " + v;
        return what + (att != null ? " attachments=" + att : "");
    }

    static int consumer(int port, String dubbo) throws IOException {
        try (Socket s = new Socket("127.0.0.1", port)) {
            s.setSoTimeout(5000);
            DataInputStream in = new DataInputStream(s.getInputStream());
            OutputStream out = s.getOutputStream();
            byte req = (byte) (FLAG_REQUEST | FLAG_TWOWAY | HESSIAN2);
            int failures = 0;

            Object[][] calls = {
                {"echo", "Ljava/lang/String;", new Object[] {"hello"}},
                {"greet", "Lorg/meltemi/demo/User;", new Object[] {new User("ann", 41, 7L, new ArrayList<>(List.of("java")))}},
                {"fail", "Ljava/lang/String;", new Object[] {"boom"}},
                {"nosuch", "", new Object[0]},
            };
            for (Object[] c : calls) {
                long id = IDS.getAndIncrement();
                write(out, req, (byte) 0, id, invocation(dubbo, (String) c[0], (String) c[1], (Object[]) c[2], attachments(dubbo)));
                Frame f = read(in);
                String d = describe(f);
                System.out.println("java consumer " + c[0] + " -> " + d);
                boolean good = f.id == id && switch ((String) c[0]) {
                    case "echo" -> d.contains(":hello");
                    case "greet" -> d.contains("ann@");
                    // Java providers send the declared exception; dubbo-remoting sends status 80.
                    case "fail" -> (d.startsWith("exception") && d.contains("DemoException")) || d.startsWith("error status=80");
                    default -> d.startsWith("error status=");
                };
                if (!good) failures++;
            }
            // One-way call, then a heartbeat with the same id (the bridge's delivery probe).
            long id = IDS.getAndIncrement();
            write(out, (byte) (FLAG_REQUEST | HESSIAN2), (byte) 0, id, invocation(dubbo, "notify", "Ljava/lang/String;", new Object[] {"one-way"}, attachments(dubbo)));
            write(out, (byte) (FLAG_REQUEST | FLAG_TWOWAY | FLAG_EVENT | HESSIAN2), (byte) 0, id, hessian(o -> o.writeNull()));
            Frame hb = read(in);
            while (!hb.isEvent() && hb.id == id) {
                // Not Dubbo semantics, but dubbo-remoting (sofa-rpc-node) answers one-way calls.
                System.out.println("java consumer notify(one-way) -> provider answered anyway: " + describe(hb));
                hb = read(in);
            }
            System.out.println("java consumer notify(one-way)+probe -> " + describe(hb));
            if (hb.id != id || !hb.isEvent()) failures++;
            System.out.println(failures == 0 ? "java consumer: all calls OK" : "java consumer: " + failures + " failures");
            return failures == 0 ? 0 : 1;
        }
    }

    /**
     * Runs scripted calls over ONE connection and prints one line per call:
     * {@code CALL <i> OK <value>}, {@code CALL <i> ERR <reason>} or {@code CALL <i> SENT} (one-way),
     * then {@code DONE}. A call is {@code interface|method|argument|k=v,k=v|mode} with mode empty or
     * {@code oneway}; {@code sleep|MS} pauses. {@code greet} sends {@code User("ann", 41, 7, [argument])};
     * every other method sends the argument as its one String. Exit status 0 when the script
     * ran to the end (the caller judges the answers).
     */
    static int script(int port, String dubbo, List<String> calls) throws IOException {
        try (Socket s = new Socket("127.0.0.1", port)) {
            s.setSoTimeout(10000);
            DataInputStream in = new DataInputStream(s.getInputStream());
            OutputStream out = s.getOutputStream();
            for (int i = 0; i < calls.size(); i++) {
                String[] p = calls.get(i).split("\\|", -1);
                if (p[0].equals("sleep")) {
                    try { Thread.sleep(Long.parseLong(p[1])); } catch (InterruptedException e) { return 1; }
                    continue;
                }
                String service = p[0], method = p[1], arg = p[2];
                boolean oneway = p.length > 4 && p[4].equals("oneway");
                Map<String, Object> att = attachments(dubbo, service);
                if (p.length > 3 && !p[3].isEmpty()) {
                    for (String kv : p[3].split(",")) {
                        String[] e = kv.split("=", 2);
                        att.put(e[0], e.length > 1 ? e[1] : "");
                    }
                }
                boolean greet = method.equals("greet");
                Object argument = greet ? new User("ann", 41, 7L, new ArrayList<>(List.of(arg))) : arg;
                String desc = greet ? "Lorg/meltemi/demo/User;" : "Ljava/lang/String;";
                long id = IDS.getAndIncrement();
                byte flags = (byte) (FLAG_REQUEST | HESSIAN2 | (oneway ? 0 : FLAG_TWOWAY));
                write(out, flags, (byte) 0, id, invocation(dubbo, service, method, desc, new Object[] {argument}, att));
                if (oneway) {
                    System.out.println("CALL " + i + " SENT");
                    continue;
                }
                Frame f = read(in);
                String d = describe(f).replace('\n', ' ');
                if (f.id != id) {
                    System.out.println("CALL " + i + " ERR unexpected frame id " + f.id + " (wanted " + id + "): " + d);
                } else if (d.startsWith("value ")) {
                    System.out.println("CALL " + i + " OK " + d.substring(6));
                } else {
                    System.out.println("CALL " + i + " ERR " + d);
                }
                System.out.flush();
            }
            System.out.println("DONE");
            return 0;
        }
    }
}
