package org.meltemi.demo;

/** The demo service every peer implements or calls. */
public interface EchoService {
    /** Returns "{tag}:{message}". */
    String echo(String message);

    /** Returns the user with "@{tag}" appended to its name, age + 1 and the tag added. */
    User greet(User user);

    /** Always throws the declared exception. */
    String fail(String reason) throws DemoException;

    /** Fire-and-forget capable: called one-way it gets no response. */
    void notify(String event);
}
