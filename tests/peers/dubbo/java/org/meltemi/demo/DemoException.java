package org.meltemi.demo;

/** The declared exception of {@code EchoService.fail}: sent back as a Dubbo exception result. */
public class DemoException extends Exception {
    private static final long serialVersionUID = 1L;

    public DemoException() {}

    public DemoException(String message) {
        super(message);
    }
}
