package org.meltemi.demo;

import java.io.Serializable;
import java.util.ArrayList;
import java.util.List;

/** The POJO argument and result of {@code EchoService.greet}: Hessian sends it as a class
 *  definition plus an object instance. */
public class User implements Serializable {
    private static final long serialVersionUID = 1L;

    public String name;
    public int age;
    public long id;
    public List<String> tags = new ArrayList<>();

    public User() {}

    public User(String name, int age, long id, List<String> tags) {
        this.name = name;
        this.age = age;
        this.id = id;
        this.tags = tags;
    }

    @Override
    public String toString() {
        return "User{name=" + name + ", age=" + age + ", id=" + id + ", tags=" + tags + "}";
    }
}
