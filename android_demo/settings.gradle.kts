pluginManagement {
    repositories {
        google()
        mavenCentral()
        gradlePluginPortal()
    }
}
dependencyResolutionManagement {
    repositoriesMode.set(RepositoriesMode.FAIL_ON_PROJECT_REPOS)
    repositories {
        google() // LiteRT-LM's Android artifact is on Google's Maven only
        mavenCentral()
    }
}
rootProject.name = "edgepack-android-demo"
include(":core", ":app")
