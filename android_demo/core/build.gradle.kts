// Pure Kotlin/JVM: no Android classes, so it compiles and is tested on any JVM (android_demo/test-core
// does the same without Gradle on machines that have none).
plugins {
    alias(libs.plugins.kotlin.jvm)
}

kotlin {
    jvmToolchain(17)
}

dependencies {
    testImplementation(libs.junit.jupiter)
    testRuntimeOnly(libs.junit.platform.launcher)
}

tasks.test {
    useJUnitPlatform()
}
