plugins {
    alias(libs.plugins.android.application)
    alias(libs.plugins.kotlin.android)
}

android {
    namespace = "dev.edgepack.demo"
    compileSdk = 36

    defaultConfig {
        applicationId = "dev.edgepack.demo"
        // LiteRT-LM's AAR declares API 24 and its arm64 JNI library is built for API 26.
        minSdk = 26
        targetSdk = 36
        versionCode = 1
        versionName = "0.1"
        ndk { abiFilters += "arm64-v8a" } // LiteRT-LM ships arm64 native code; Gemma needs a 64-bit phone
    }
    buildTypes {
        release {
            isMinifyEnabled = false
        }
    }
    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_17
        targetCompatibility = JavaVersion.VERSION_17
    }
    androidResources {
        // Bundle files are copied out of the APK byte for byte and sha256-checked: store them as they are.
        noCompress += listOf("litertlm", "json", "onnx", "data", "bin")
    }
}

kotlin {
    jvmToolchain(17)
}

dependencies {
    implementation(project(":core"))
    implementation(libs.litertlm.android)
    implementation(libs.kotlinx.coroutines.android)
    implementation(libs.androidx.core.ktx)
    implementation(libs.androidx.appcompat)
    implementation(libs.androidx.lifecycle.runtime.ktx)
    implementation(libs.androidx.documentfile)
}

// Build-time export: `./gradlew :app:exportBundle` runs `edgepack export` with gradle.properties'
// edgepack.* settings (or -Pedgepack.source=... on the command line). A bundle that fits
// edgepack.assetLimitMiB goes into the APK's assets (the app installs it on first start); a larger
// one stays in app/build/bundle, to be served for download or pushed with adb.
val edgepackCli = providers.gradleProperty("edgepack.cli").orElse("edgepack")
val edgepackSource = providers.gradleProperty("edgepack.source").orElse("gemma-3-270m")
val edgepackRecipe = providers.gradleProperty("edgepack.recipe").orElse("int8")
val edgepackContext = providers.gradleProperty("edgepack.context").orElse("2048")
val assetLimitMiB = providers.gradleProperty("edgepack.assetLimitMiB").map(String::toLong).orElse(512L)
val exported = layout.buildDirectory.dir("bundle")
val assetBundle = layout.projectDirectory.dir("src/main/assets/bundle")

val exportBundle by tasks.registering(Exec::class) {
    group = "edgepack"
    description = "Exports the model with edgepack and places the bundle where the app finds it."
    inputs.property("source", edgepackSource)
    inputs.property("recipe", edgepackRecipe)
    inputs.property("context", edgepackContext)
    outputs.dir(exported)
    commandLine(edgepackCli.get(), "export", edgepackSource.get(), "--format", "litertlm",
                "--quant", edgepackRecipe.get(), "--max-context", edgepackContext.get(),
                "-o", exported.get().asFile.path, "--force")
    doLast {
        val folder = exported.get().asFile
        val mib = folder.walkTopDown().filter { it.isFile }.sumOf { it.length() } shr 20
        delete(assetBundle)
        if (mib <= assetLimitMiB.get()) {
            copy { from(folder); into(assetBundle) }
            logger.lifecycle("edgepack: $mib MiB bundle placed in the APK's assets (assets/bundle)")
        } else {
            logger.lifecycle("edgepack: $mib MiB bundle is over ${assetLimitMiB.get()} MiB: kept in $folder; " +
                             "serve it for the app's Download button, or adb push it (android_demo/README.md)")
        }
    }
}
